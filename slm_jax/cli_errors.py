"""How the command-line entry points report a bad input: one line, exit code 2.

The layers below name a binding as gin does (`set ModelConfig.n_kv_heads to ...`,
`change train.grad_accum`); a command line spells the binding a fix names as its own
flag when it prints the error (`report(..., binding_flag=...)`).
"""

from __future__ import annotations

import os
import re
import sys

# A fix naming a binding: the verb, then `[scope/]Configurable.param` (a param may be a
# pattern such as `rope_*` or a pair such as `data/fsdp`). A value after it (`=2`) stays.
_FIX = re.compile(r"\b(?i:set|bind|change|lower|raise|unset|leave|point|fix(?: the)?)\s+"
                  r"(?=(?:\w+/)*[A-Za-z_]\w*\.[A-Za-z_*])")


def one_line(err: BaseException) -> str:
    # gin appends "In call to configurable 'x' (<function ...>)" lines: noise here.
    lines = [ln.strip() for ln in str(err).splitlines()
             if ln.strip() and not ln.strip().startswith("In call to configurable")]
    return " ".join(lines) if lines else type(err).__name__


def with_flags(message: str, binding_flag: str) -> str:
    """`message` with each binding that a fix names prefixed by `binding_flag`: with a
    prefix "--x." "set ModelConfig.n_kv_heads to 2" reads "set --x.ModelConfig.n_kv_heads
    to 2". What the message says is wrong ("ModelConfig.n_heads=3 ...") is left as it is."""
    return _FIX.sub(lambda m: m.group(0) + binding_flag, message) if binding_flag else message


def report(program: str, err: BaseException, binding_flag: str = "") -> int:
    """Prints `program: error: ...` on stderr and returns 2; SLM_JAX_TRACEBACK=1 re-raises.

    `binding_flag`: the prefix that makes a gin binding a flag of `program`, for the
    bindings the error's fix names (see `with_flags`); "" leaves them as they are.
    """
    if os.environ.get("SLM_JAX_TRACEBACK"):
        raise err
    print(f"{program}: error: {with_flags(one_line(err), binding_flag)}  "
          "(SLM_JAX_TRACEBACK=1 shows the traceback)", file=sys.stderr)
    return 2
