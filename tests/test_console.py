"""What a run shows on the console (slm_jax/console.py): own records and errors; the rest,
and known C++ start-up noise, only in the run's log file."""
import logging
import os
import subprocess
import sys
import textwrap

from slm_jax import console

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _record(level, pathname, name="x"):
    return logging.LogRecord(name, level, pathname, 1, "msg", None, None)


def test_console_shows_own_info_and_others_errors_only():
    keep = console._ConsoleFilter().filter
    own = os.path.join(os.path.dirname(console.__file__), "jobs", "train.py")
    assert keep(_record(logging.INFO, own))
    assert not keep(_record(logging.WARNING, "/site-packages/orbax/checkpoint_manager.py"))
    assert keep(_record(logging.ERROR, "/site-packages/orbax/checkpoint_manager.py"))
    assert not keep(_record(logging.INFO, own, name="slm_jax.native"))


def test_log_file_gets_every_library_at_info(tmp_path):
    path = str(tmp_path / "run" / "log.txt")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)
    try:
        with console.log_file(path):
            logging.getLogger("absl").info("orbax says hello")
            logging.info("resumed from step %d", 7)
        logging.getLogger("absl").info("after the file closed")
    finally:
        root.setLevel(level)
    text = open(path).read()
    assert "orbax says hello" in text and "resumed from step 7" in text
    assert "after the file closed" not in text


def test_native_noise_leaves_the_console_and_errors_stay(tmp_path):
    """fd-2 writes of C++ code: absl INFO lines, the InitializeLog notice and SentencePiece's
    note are filtered; an absl error line and Python's own stderr still reach the terminal."""
    script = textwrap.dedent(f"""
        import os, sys, time, logging
        sys.path.insert(0, {REPO!r})
        from slm_jax import console
        console.filter_native_stderr()
        console.setup()
        for line in [b"WARNING: All log messages before absl::InitializeLog() is called",
                     b"I0000 00:00:1796047631.706100   15695 cudart_stub.cc:31] no cuda",
                     b"normalizer.cc(51) LOG(INFO) precompiled_charsmap is empty.",
                     b"E0000 00:00:1.5   12 pjrt.cc:9] a real failure",
                     b"plain native text"]:
            os.write(2, line + b"\\n")
        print("python stderr", file=sys.stderr)
        time.sleep(0.5)
        with console.log_file({str(tmp_path / 'log.txt')!r}):
            pass
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert "a real failure" in done.stderr and "plain native text" in lines
    assert "python stderr" in lines
    assert "cudart_stub" not in done.stderr and "InitializeLog" not in done.stderr
    assert "precompiled_charsmap" not in done.stderr
    log = open(tmp_path / "log.txt").read()
    assert "cudart_stub" in log and "precompiled_charsmap" in log
