"""Model-written programs in the box (slm_jax/math_eval/sandbox.py): a table of hostile
programs, each contained, reported to the model as an error, and nothing on the host changed."""

import os
import subprocess
import time

import pytest

from slm_jax.math_eval.sandbox import Report, SandboxConfig, run_program

# Shorter than the harness's 5 s, so the loops cost CI little; the limits work the same.
BOX = SandboxConfig(wall_s=2.0, cpu_s=2, isolation="namespaces")
SECRET = "SLM_SANDBOX_TEST_TOKEN"


@pytest.fixture(autouse=True)
def secret_in_our_environment(monkeypatch):
    monkeypatch.setenv(SECRET, "hunter2")


def outside_file(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "outside.txt"


HOSTILE = {
    # name: (program, the report must match, what must hold on the host afterwards)
    "infinite loop": ("while True:\n    pass",
                      "TimeoutError: the program ", None),
    "fork bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n"
                  "        pass", "TimeoutError: the program ", "no_nobody_left"),
    "memory bomb": ("x = bytearray(8 << 30)", "MemoryError", None),
    "huge output": ("print('x' * (50 << 20))", "OSError: [Errno 27] File too large", None),
    "parent's environment": (f"import os\nprint(os.environ.get({SECRET!r}, 'not found'), "
                             "sorted(os.environ))", "not found ['HOME', 'LANG', 'OLDPWD', 'PATH', "
                             "'PWD']", None),
    "read outside its directory": ("print(open({outside!r}).read())",
                                   "FileNotFoundError: [Errno 2] No such file or directory", None),
    "read the project": ("print(open({project!r}).read()[:20])",
                         "FileNotFoundError: [Errno 2] No such file or directory", None),
    "write outside its directory": ("open({written!r}, 'w').write('x')",
                                    "FileNotFoundError: [Errno 2] No such file or directory",
                                    "not_written"),
    "write into the system": ("open('/usr/lib/pwned', 'w').write('x')",
                              "OSError: [Errno 30] Read-only file system", None),
    "open a socket": ("import socket\nsocket.create_connection(('127.0.0.1', 22), timeout=1)",
                      "OSError: [Errno 101] Network is unreachable", None),
    "signal its parent": ("import os\nos.kill(os.getppid(), 9)",
                          "PermissionError: [Errno 1] Operation not permitted", None),
    "signal everything it can": ("import os\nos.kill(-1, 9)", None, None),
    "sys.exit": ("import sys\nsys.exit(3)", "SystemExit: 3", None),
    "C-level crash": ("import ctypes\nctypes.string_at(0)",
                      "RuntimeError: the program stopped by SIGSEGV: it crashed", None),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_program_is_contained_and_reported(name, tmp_path, tmp_path_factory):
    program, expected, host_check = HOSTILE[name]
    outside = outside_file(tmp_path_factory)
    outside.write_text("the evaluator's own file")
    written = tmp_path / "written_by_the_program"
    program = program.format(outside=str(outside), written=str(written),
                             project=os.path.abspath(__file__))
    start = time.perf_counter()
    report = run_program(program, BOX)
    elapsed = time.perf_counter() - start
    print(f"{name}: {elapsed:.2f}s {report.text[:120]!r}")
    assert isinstance(report, Report) and report.isolation == "namespaces"
    if expected is not None:
        assert report.text.startswith(expected), report.text
    assert len(report.text) <= 400
    assert elapsed < BOX.wall_s + 3   # a fork bomb costs no more than its own time limit
    if host_check == "not_written":
        assert not written.exists()
    if host_check == "no_nobody_left":
        left = subprocess.run(["pgrep", "-u", "65534"], capture_output=True, text=True).stdout
        assert left.strip() == "", left
    assert outside.read_text() == "the evaluator's own file"
    # and the evaluation goes on
    assert run_program("print(6 * 7)", BOX) == Report("42", ok=True, isolation="namespaces")


def test_reports_follow_the_harness():
    assert run_program("x = 1", BOX).text == "Done"          # a silent success
    long = run_program("print('y' * 1000)", BOX)
    assert long.ok and long.text == "y" * 400               # cut to 400 characters
    failed = run_program("print('partial')\nraise ValueError('bad step')", BOX)
    assert not failed.ok and failed.text == "ValueError: bad step"   # the last traceback line
    assert run_program("import sympy\nprint(sympy.sqrt(8))", BOX).text == "2*sqrt(2)"


# The fallback where the kernel allows no namespaces: limits, a stripped environment and an empty
# directory only (docs/evaluation.md says what it does not stop; destructive programs are left out).
FALLBACK = SandboxConfig(wall_s=2.0, cpu_s=2, isolation="rlimits")


@pytest.mark.parametrize("name", ["infinite loop", "memory bomb", "huge output",
                                  "parent's environment", "sys.exit", "C-level crash"])
def test_the_rlimits_fallback_still_holds_the_limits(name):
    program, expected, _ = HOSTILE[name]
    report = run_program(program, FALLBACK)
    assert report.isolation == "rlimits" and not report.text.startswith("hunter2")
    if name == "parent's environment":
        assert report.text == "not found ['HOME', 'LANG', 'PATH']"
    else:
        assert report.text.startswith(expected), report.text


def test_an_unknown_isolation_is_refused():
    with pytest.raises(ValueError, match="SandboxConfig.isolation"):
        SandboxConfig(isolation="docker")


@pytest.mark.parametrize("isolation", ["namespaces", "rlimits"])
def test_a_loop_stopped_by_the_cpu_limit_is_a_time_out_too(isolation):
    # The CPU limit and the wall clock race for a busy loop; either way the model reads a time-out.
    report = run_program("while True:\n    pass",
                         SandboxConfig(wall_s=20.0, cpu_s=1, isolation=isolation))
    assert report.text == "TimeoutError: the program used more than 1 s of CPU time", report.text
    assert not report.ok
