"""Model-written programs run in a box: never in the evaluator's process, never with its files,
environment or network in reach.

Tool-integrated evaluation (math-evaluation-harness's `tora` mode) runs the Python a model
writes. The harness `exec()`s it in a worker of its own process pool with no isolation at
all; here each program runs in its own short-lived process:

* **namespaces** (root, as on these machines and CI; or a user namespace where the kernel
  allows one): `unshare` gives it new mount, pid, network, IPC and UTS namespaces. Inside, a
  fresh tmpfs becomes its root with only the system directories and the Python installation
  bound read-only, an empty `/work` (its working directory) and `/tmp`, and the few devices
  Python needs; no `/proc`, no host `/tmp`, `/root`, `/home` or project files. The network
  namespace has no interface but a down loopback. It then drops to `nobody` (uid 65534, no
  groups, no capabilities, `no_new_privs`) before Python starts. Everything it made dies with
  the namespace; killing `unshare` kills the whole pid namespace.
* **rlimits** (the fallback where neither root nor user namespaces are available): the same
  limits and a stripped environment in an empty temporary directory, as the calling user; it
  does NOT stop reading or writing the user's files, the network, or signals to the user's
  processes. `SandboxConfig.isolation` says which is used ('auto' picks the strongest that works).

Both set the limits: wall time (the harness's 5 s), CPU time, address space, process count
(binding for `nobody`; root is exempt, which is why the box drops to it), file size (which
also caps its output: stdout goes to a file) and open files; the environment holds only
PATH, HOME and LANG.

Reports keep the harness's semantics: what the program printed to stdout; if it failed, the
last line of its traceback; "Done" when it succeeded silently; cut to 400 characters.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import Optional

NOBODY = 65534

# Runs inside the box: the program from /work/program.py, as the harness's executor runs it
# (globals of a fresh module, stdout captured by the file it writes to).
_RUNNER = r"""
import sys, traceback
source = open(sys.argv[1], encoding="utf-8").read()
try:
    exec(compile(source, "<program>", "exec"), {"__name__": "__main__"})
except BaseException as e:   # SystemExit and KeyboardInterrupt too: the report says which
    sys.stdout.flush()
    lines = traceback.format_exception_only(type(e), e)
    sys.stderr.write("\x00error\x00" + (lines[-1].strip() if lines else type(e).__name__))
    sys.exit(1)
"""

# Runs as root in the new mount namespace: builds the box's root and starts the runner in it.
_ENTER_BOX = r"""
set -eu
box=$1; prefix=$2; user=$3; shift 3
mount --make-rprivate /
mount -t tmpfs -o size=64m,mode=755 tmpfs "$box"
for dir in /usr /bin /sbin /lib /lib32 /lib64 /etc "$prefix"; do
    [ -e "$dir" ] || continue
    if [ -L "$dir" ]; then ln -s "$(readlink "$dir")" "$box$dir"; continue; fi
    mkdir -p "$box$dir"
    mount --rbind -o ro "$dir" "$box$dir"
    mount -o remount,bind,ro "$box$dir"
done
mkdir -p "$box/dev" "$box/work" "$box/tmp"
for dev in null zero urandom random; do
    touch "$box/dev/$dev"; mount --bind "/dev/$dev" "$box/dev/$dev"
done
chmod 1777 "$box/tmp"
cp "$PROGRAM" "$box/work/program.py"; cp "$RUNNER" "$box/work/.runner.py"
# This shell stays the namespace's pid 1, as root: a credential change would clear the
# parent-death signal that `unshare --kill-child` set, and then killing `unshare` would no
# longer take the namespace (a fork bomb's processes) with it.
export PATH=/usr/bin:/bin
if [ "$user" = drop ]; then
    chown -R 65534:65534 "$box/work" "$box/tmp"
    /usr/sbin/chroot "$box" env -i PATH=/usr/bin:/bin HOME=/work LANG=C.UTF-8 setpriv \
        --reuid=65534 --regid=65534 --clear-groups --no-new-privs --inh-caps=-all \
        --bounding-set=-all -- sh -c 'cd /work && exec "$@"' box "$@"
else
    /usr/sbin/chroot "$box" env -i PATH=/usr/bin:/bin HOME=/work LANG=C.UTF-8 \
        sh -c 'cd /work && exec "$@"' box "$@"
fi
"""


@dataclasses.dataclass(frozen=True)
class SandboxConfig:
    """Limits of one program run (the harness: 5 s, reports of 400 characters)."""
    wall_s: float = 5.0
    cpu_s: int = 5
    memory_bytes: int = 1 << 30         # address space; numpy and sympy need ~300 MB
    max_processes: int = 64             # of uid nobody, host-wide (RLIMIT_NPROC)
    output_bytes: int = 1 << 20         # stdout and any file it writes (RLIMIT_FSIZE)
    report_chars: int = 400
    isolation: str = "auto"             # 'auto', 'namespaces' or 'rlimits'

    def __post_init__(self):
        if self.isolation not in ("auto", "namespaces", "rlimits"):
            raise ValueError(f"SandboxConfig.isolation={self.isolation!r}; set it to 'auto', "
                             "'namespaces' or 'rlimits'.")


@dataclasses.dataclass(frozen=True)
class Report:
    text: str           # what the model is shown in its ```output block
    ok: bool            # ran to the end without an exception, a signal or a limit
    isolation: str      # 'namespaces' or 'rlimits'


def _limits(config: SandboxConfig):
    def apply():
        os.setsid()   # its own process group: nothing of it can reach ours by group signals
        # CPU: the soft limit's SIGXCPU comes a second before the hard limit's SIGKILL, so a
        # loop that wins the race against the wall clock is still reported as a time-out.
        resource.setrlimit(resource.RLIMIT_CPU, (config.cpu_s, config.cpu_s + 1))
        for limit, value in ((resource.RLIMIT_AS, config.memory_bytes),
                             (resource.RLIMIT_NPROC, config.max_processes),
                             (resource.RLIMIT_FSIZE, config.output_bytes),
                             (resource.RLIMIT_NOFILE, 64), (resource.RLIMIT_CORE, 0)):
            resource.setrlimit(limit, (value, value))
    return apply


_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/work", "LANG": "C.UTF-8"}
_namespaces_work: Optional[str] = None   # cached: which namespace command works here


def _namespace_command() -> Optional[list[str]]:
    """The `unshare` prefix that works on this host (root: plain; else a user namespace),
    or None when neither does."""
    global _namespaces_work
    if _namespaces_work is None:
        _namespaces_work = ""
        candidates = ([["unshare", "--mount", "--pid", "--net", "--ipc", "--uts", "--fork",
                        "--kill-child"]] if os.geteuid() == 0 else [])
        candidates.append(["unshare", "--user", "--map-root-user", "--mount", "--pid", "--net",
                           "--ipc", "--uts", "--fork", "--kill-child"])
        for prefix in candidates:
            if shutil.which("unshare") and subprocess.run(
                    [*prefix, "sh", "-c", "mount -t tmpfs tmpfs /mnt"], capture_output=True,
                    env=_ENV, timeout=30).returncode == 0:
                _namespaces_work = " ".join(prefix)
                break
    return _namespaces_work.split() if _namespaces_work else None


def run_program(source: str, config: SandboxConfig = SandboxConfig()) -> Report:
    """Runs `source` in the box; never raises for anything the program does."""
    prefix = _namespace_command() if config.isolation != "rlimits" else None
    if config.isolation == "namespaces" and prefix is None:
        raise RuntimeError("SandboxConfig.isolation='namespaces' but this host allows neither "
                           "root mount namespaces nor user namespaces; set "
                           "SandboxConfig.isolation='rlimits' (weaker: see docs/evaluation.md).")
    isolation = "namespaces" if prefix else "rlimits"
    with tempfile.TemporaryDirectory(prefix="slm_sandbox_") as scratch:
        program, runner = os.path.join(scratch, "program.py"), os.path.join(scratch, "runner.py")
        with open(program, "w", encoding="utf-8") as f:
            f.write(source)
        with open(runner, "w", encoding="utf-8") as f:
            f.write(_RUNNER)
        stdout_path, stderr_path = os.path.join(scratch, "stdout"), os.path.join(scratch, "stderr")
        python = [sys.executable, "-I", "-B"]
        if prefix:
            box = os.path.join(scratch, "box")
            os.mkdir(box)
            user = "drop" if os.geteuid() == 0 and "--user" not in prefix else "keep"
            command = [*prefix, "sh", "-c", _ENTER_BOX, "enter_box", box, sys.base_prefix, user,
                       *python, "/work/.runner.py", "/work/program.py"]
            env = {**_ENV, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PROGRAM": program,
                   "RUNNER": runner}
            cwd = scratch
        else:
            work = os.path.join(scratch, "work")
            os.mkdir(work)
            command, env, cwd = [*python, runner, program], {**_ENV, "HOME": work}, work
        with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    cwd=cwd, env=env, preexec_fn=_limits(config))
            try:
                code = proc.wait(timeout=config.wall_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                _kill(proc)
                code, timed_out = proc.wait(), True
        stdout = _read(stdout_path, config.output_bytes)
        stderr = _read(stderr_path, config.output_bytes)
    return Report(_report(stdout, stderr, code, timed_out, config), ok=code == 0 and not timed_out,
                  isolation=isolation)


def _kill(proc: subprocess.Popen) -> None:
    """The whole box. Namespaces: its pid 1 (the child of `unshare`), whose death makes the
    kernel kill every process of the namespace and reap them before `unshare` returns; so
    when `wait()` returns, nothing of it runs. rlimits: its process group."""
    try:
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
            children = [int(pid) for pid in f.read().split()]
    except OSError:
        children = []
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if not children:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.kill()


def _read(path: str, limit: int) -> str:
    with open(path, "rb") as f:
        return f.read(limit).decode("utf-8", "replace")


def _report(stdout: str, stderr: str, code: int, timed_out: bool, config: SandboxConfig) -> str:
    if timed_out:
        text = f"TimeoutError: the program ran longer than {config.wall_s:g} s"
    elif "\x00error\x00" in stderr:
        text = stderr.rsplit("\x00error\x00", 1)[1].strip()
    elif code < 0 or code >= 128:
        number = -code if code < 0 else code - 128
        name = signal.Signals(number).name if number in signal.Signals._value2member_map_ else number
        why = {"SIGXFSZ": "its output passed the size limit",
               "SIGKILL": "it was killed (a limit)"}.get(name, "it crashed")
        text = (f"TimeoutError: the program used more than {config.cpu_s} s of CPU time"
                if name == "SIGXCPU" else f"RuntimeError: the program stopped by {name}: {why}")
    elif code != 0:
        lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
        text = lines[-1] if lines else f"RuntimeError: exit code {code}"
    else:
        text = stdout.strip() or "Done"
    return text[: config.report_chars]
