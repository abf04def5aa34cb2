"""What a run shows on the console, and the full log beside it.

The console shows the progress bars, the metric lines, the results tables and this
project's own log records (`slm_jax.*`, INFO and up); other libraries' records (absl,
orbax, jax, TensorFlow; Python warnings) reach it only at ERROR. Every record, from
every library, at INFO and up also goes to the log file of the run (`log_file`), so
nothing a newcomer does not need to see is lost.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys

FORMAT = "%(asctime)s %(levelname).1s %(name)s %(filename)s:%(lineno)d] %(message)s"
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class _ConsoleFilter(logging.Filter):
    """Records logged by code in this package at INFO+, everyone else's at ERROR+."""

    def filter(self, record: logging.LogRecord) -> bool:
        own = os.path.abspath(record.pathname).startswith(_PACKAGE_DIR + os.sep)
        return record.levelno >= (logging.INFO if own else logging.ERROR)


def setup() -> None:
    """Routes logging as above (idempotent); call once, before the job runs."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
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


@contextlib.contextmanager
def log_file(path: str):
    """Every log record (all libraries, INFO+) also goes to `path` while inside."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()
