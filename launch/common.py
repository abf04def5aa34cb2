"""Pieces both launchers share: gin-flag pass-through, shell quoting, dry-run/execute.

A launcher builds a plan: a list of steps, each an argv list (a command) or a
string (a "#" note, shown but never run). `--dry_run` prints the plan as shell
lines that run exactly what execution would run, so a dry run can be pasted.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
GIN_USAGE = "gin flags go after `--`, e.g. -- --gin_file=gin/demo.gin --gin.train.run_dir=gs://b/r"


class LaunchError(Exception):
    """A user mistake; reported as one line, exit code 2."""


def split_gin_flags(argv: list[str]) -> tuple[list[str], list[str]]:
    """argv -> (launcher flags, gin flags after the first `--`)."""
    if "--" not in argv:
        return list(argv), []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1:]


def check_gin_flags(flags: list[str]) -> list[str]:
    """Rejects what slm_jax.main would reject, before it is sent to every host."""
    expecting_path = False
    for flag in flags:
        if expecting_path:
            expecting_path = False
        elif flag == "--gin_file":
            expecting_path = True
        elif not (flag.startswith("--gin_file=") or flag.startswith("--gin.")):
            raise LaunchError(f"{flag!r} is not a gin flag; {GIN_USAGE}")
    if expecting_path:
        raise LaunchError("--gin_file needs a path")
    return flags


def parse_env(pairs: list[str] | None) -> list[tuple[str, str]]:
    """--env KEY=VALUE flags -> [(KEY, VALUE)], keys checked so they can be exported."""
    parsed = []
    for pair in pairs or []:
        key, eq, value = pair.partition("=")
        if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise LaunchError(f"--env {pair!r}: expected KEY=VALUE, "
                              "e.g. --env XLA_FLAGS=--xla_dump_to=/tmp/x")
        parsed.append((key, value))
    return parsed


def jax_version(requirements: Path = REPO_ROOT / "requirements.txt") -> str:
    """The jax pin in requirements.txt, so TPU hosts get the jax the project was tested with."""
    for line in requirements.read_text().splitlines():
        match = re.fullmatch(r"\s*jax\s*==\s*([^\s#;]+)\s*(#.*)?", line)
        if match:
            return match.group(1)
    raise LaunchError(f"{requirements}: no `jax==VERSION` pin to install jax[tpu] at")


_SHLEX_UNSAFE = re.compile(r"[^\w@%+=:,./-]", re.ASCII)
# Interactive bash expands `!` in double quotes unless a blank, `=` or the end follows it.
_HISTORY_EXPANSION = re.compile(r"!(?![\s=]|$)")


def quote(word: str) -> str:
    """Shell-quotes one word; prefers "..." for words holding ' (gin string literals).

    shlex.quote is always correct but renders --gin.x="'a b'" as
    '--gin.x='"'"'a b'"'"'' . Inside double quotes only \\ " $ ` need escaping,
    plus `!` for interactive bash, so words with such a `!` are left to shlex.
    """
    if word and not _SHLEX_UNSAFE.search(word):
        return word
    if "'" in word and not _HISTORY_EXPANSION.search(word):
        return '"' + re.sub(r'([\\"$`])', r"\\\1", word) + '"'
    return shlex.quote(word)


def quote_flag(word: str) -> str:
    """quote(), but --name=VALUE keeps its name bare: --gin.x="'a b'" rather than "--gin.x='a b'"."""
    name, eq, value = word.partition("=")
    if word.startswith("-") and eq and not _SHLEX_UNSAFE.search(name):
        return name + eq + (quote(value) if value else "")
    return quote(word)


def join(argv: list[str]) -> str:
    return " ".join(quote_flag(word) for word in argv)


def env_prefix(env: list[tuple[str, str]]) -> list[str]:
    """KEY=VALUE words to put before a command (already quoted)."""
    return [f"{key}={quote(value)}" for key, value in env]


def detached(program: str, args: list[str], log: str, env: list[tuple[str, str]] = (),
             pid_file: str | None = None) -> str:
    """Shell line starting `program args` in its own session, so it outlives the ssh that starts it.

    stdin from /dev/null and all output appended to `log` let ssh return at
    once. `program`, `log` and `pid_file` go in as written (so a leading `~`
    expands); `args` and the env values are quoted.
    """
    line = " ".join([*env_prefix(env), "nohup setsid", program, join(args),
                     f">> {log} 2>&1 < /dev/null &"])
    return line + (f" echo $! > {pid_file}" if pid_file else "")


def render(plan: list) -> str:
    return "\n".join(step if isinstance(step, str) else join(step) for step in plan)


def execute(plan: list, dry_run: bool) -> None:
    """Prints the plan (dry run) or runs its commands in order, stopping at the first failure."""
    if dry_run:
        print(render(plan))
        return
    for step in plan:
        if isinstance(step, str):
            print(step, flush=True)
            continue
        print("+ " + join(step), flush=True)
        try:
            result = subprocess.run(step)
        except FileNotFoundError:
            raise LaunchError(f"{step[0]}: not found on PATH") from None
        if result.returncode != 0:
            raise LaunchError(f"`{join(step)}` exited with status {result.returncode}")


def main_guard(main, argv: list[str] | None = None) -> int:
    """Runs a launcher's main; a LaunchError is one line on stderr and exit code 2."""
    try:
        main(sys.argv[1:] if argv is None else argv)
    except LaunchError as e:
        print(f"{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
        return 2
    return 0
