"""What a run shows on the console, and the full log beside it.

The console shows the progress bars, the metric lines, the results tables and the log
records of this package's code (INFO and up); other libraries' records (absl, orbax, jax,
TensorFlow; Python warnings) reach it only at ERROR, and the known start-up noise C++
libraries write to stderr is filtered out on the command line (`filter_native_stderr`).
Every record, from every library, at INFO and up also goes to the log file of the run
(`log_file`), so nothing is lost.
"""
from __future__ import annotations

import collections
import logging
import os
import re
import sys
import threading

FORMAT = "%(asctime)s %(levelname).1s %(name)s %(filename)s:%(lineno)d] %(message)s"
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class _ConsoleFilter(logging.Filter):
    """Records logged by code in this package at INFO+, everyone else's at ERROR+, except
    orbax's: its errors (a failed async save, once per thread) reach the console as the one
    line the Checkpointer raises, and the log file whole."""

    def filter(self, record: logging.LogRecord) -> bool:
        path = os.path.abspath(record.pathname)
        if _ORBAX_DIR in path:
            return False
        own = (path.startswith(_PACKAGE_DIR + os.sep)
               and record.name not in (_native_log.name, _unraisable_log.name))
        return record.levelno >= (logging.INFO if own else logging.ERROR)


_ORBAX_DIR = f"{os.sep}orbax{os.sep}checkpoint{os.sep}"


class _LogFileHandler(logging.FileHandler):
    """A log file that stops, without a word on the console, when its disk is full (the
    write that needed the space says so)."""

    def handleError(self, record: logging.LogRecord) -> None:
        self.setLevel(logging.CRITICAL + 1)


# Lines C++ libraries write to fd 2 on their own: absl's INFO/WARNING lines (TensorFlow's
# CUDA probe on a CPU-only machine), its "before InitializeLog" notice, and tensorflow-text's
# SentencePiece note on each model load. Errors (E/F lines) and anything else pass through.
# libtpu on a host without TPU chips (the `compile` job's TPU compiler; any JAX start-up
# where libtpu is installed) explains once that it cannot find the TPU's metadata.
_NATIVE_NOISE = re.compile(rb"^(?:[IW]\d{4} [\d:.]+ +\d+ \S+:\d+\] |WARNING: All log "
                           rb"messages before absl::InitializeLog|\S+\.cc\(\d+\) LOG\(INFO\) |"
                           rb"Failed to find host bounds for accelerator type: WARNING: could not "
                           rb"determine TPU|WARNING: Logging before InitGoogle\(\)|E\d{4} [\d:.]+ +\d+ "
                           rb"common_lib\.cc:\d+\] INVALID_ARGUMENT: Error: unexpected worker hostname "
                           rb"'WARNING: could not determine TPU|=== Source Location Trace: ===|"
                           rb"learning/\w+/tfrc/runtime/libtpu_init_utils\.cc:\d+)")
_native_log = logging.getLogger("slm_jax.native")
_native_backlog: collections.deque = collections.deque(maxlen=2000)


def filter_native_stderr() -> None:
    """Routes the known noise C++ code writes to fd 2 into the log; for the command line
    only (it replaces fd 2 of the process; Python's own writes keep the terminal)."""
    sys.stderr.flush()
    terminal = os.dup(2)
    sys.stderr = os.fdopen(os.dup(terminal), "w", buffering=1)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)

    def pump():
        pending = b""
        while chunk := os.read(read_fd, 1 << 16):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if _NATIVE_NOISE.match(line):
                    text = line.decode("utf-8", "replace")
                    _native_backlog.append(text)
                    _native_log.info("%s", text)
                else:
                    os.write(terminal, line + b"\n")

    threading.Thread(target=pump, name="native-stderr", daemon=True).start()


def setup() -> None:
    """Routes logging as above (idempotent); call once, before the job runs."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import sentencepiece
        sentencepiece.set_min_log_level(1)   # "precompiled_charsmap is empty" on each load
    except ImportError:
        pass
    root = logging.getLogger()
    if any(getattr(h, "_slm_console", False) for h in root.handlers):
        return
    # absl installs its own handler on the root logger when imported; its records
    # then go through the handlers below instead.
    try:
        from absl import logging as absl_logging
        root.removeHandler(absl_logging.get_absl_handler())
        absl_logging.set_verbosity(absl_logging.INFO)
    except ImportError:
        pass
    logging.captureWarnings(True)
    root.setLevel(logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(levelname).1s] %(message)s"))
    handler.addFilter(_ConsoleFilter())
    handler._slm_console = True
    root.addHandler(handler)


_unraisable_log = logging.getLogger("slm_jax.unraisable")


def _log_unraisable(unraisable) -> None:
    _unraisable_log.warning("%s: %r", unraisable.err_msg or "Exception ignored in",
                            unraisable.object, exc_info=(unraisable.exc_type, unraisable.exc_value,
                                                         unraisable.exc_traceback))


def quiet_after_refusal() -> None:
    """After a refusal's one line, the console shows nothing more: what libraries still
    report while their pending work winds down (asyncio's "Task exception was never
    retrieved", "Exception ignored in: <coroutine ...>" at exit) goes to the log file only."""
    for handler in logging.getLogger().handlers:
        if getattr(handler, "_slm_console", False):
            handler.setLevel(logging.CRITICAL + 1)
    sys.unraisablehook = _log_unraisable


class log_file:
    """Every log record (all libraries, INFO+) also goes to `path` from `start()` (or from
    entering, with `start=True`) until exit. A run starts it once its inputs have loaded,
    so a run refused for bad input leaves its run_dir as it was."""

    def __init__(self, path: str, start: bool = True):
        self.path, self._start_on_enter, self._handler = path, start, None

    def __enter__(self) -> "log_file":
        if self._start_on_enter:
            self.start()
        return self

    def start(self) -> None:
        if self._handler is not None:
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        handler = _LogFileHandler(self.path)
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter(FORMAT))
        # What C++ code wrote before this file existed (start-up) heads the file.
        for line in _native_backlog:
            handler.stream.write(f"(native stderr) {line}\n")
        logging.getLogger().addHandler(handler)
        self._handler = handler

    def __exit__(self, *exc) -> None:
        if self._handler is not None:
            logging.getLogger().removeHandler(self._handler)
            self._handler.close()
            self._handler = None
