"""How the command-line entry points report a bad input: one line, exit code 2."""

from __future__ import annotations

import os
import sys


def one_line(err: BaseException) -> str:
    # gin appends "In call to configurable 'x' (<function ...>)" lines: noise here.
    lines = [ln.strip() for ln in str(err).splitlines()
             if ln.strip() and not ln.strip().startswith("In call to configurable")]
    return " ".join(lines) if lines else type(err).__name__


def report(program: str, err: BaseException) -> int:
    """Prints `program: error: ...` on stderr and returns 2; SLM_JAX_TRACEBACK=1 re-raises."""
    if os.environ.get("SLM_JAX_TRACEBACK"):
        raise err
    print(f"{program}: error: {one_line(err)}  (SLM_JAX_TRACEBACK=1 shows the traceback)",
          file=sys.stderr)
    return 2
