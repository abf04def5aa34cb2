"""Entry point: `python -m slm_jax.main --gin_file=A.gin --gin_file=B.gin --gin.X=Y`.

Files and bindings apply in order, so a later one wins (as in t5x). The job is
chosen in gin with `run.job` ("train" or "demo"); with no flags at all the
embedded demo (gin/demo.gin) runs.
"""

from __future__ import annotations

import os
import re
import sys
import tokenize

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import gin  # noqa: E402

from slm_jax import cli_errors, console  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_GIN_FILE = "gin/demo.gin"
USAGE = ("usage: python -m slm_jax.main [--gin_file=FILE.gin ...] [--gin.NAME=VALUE ...]\n"
         "  Gin files and bindings apply in order (the later wins); run.job picks the job:\n"
         "  train, score, demo, experiment, bench, analyze, eval, compile, sft (default: the demo).\n"
         "  e.g. python -m slm_jax.main --gin_file=gin/demo.gin --gin.train.num_steps=50")


# Bindings that moved; the old spelling fails with one line naming the new one.
RENAMED_BINDINGS = {
    **{f"{job}.reference_checkpoint": "ReferenceConfig.checkpoint"
       for job in ("train", "score", "analyze")},
    **{f"{job}.reference_dtype": "ReferenceConfig.dtype" for job in ("train", "score", "bench")},
    **{f"{job}.reference_model": "ReferenceConfig.model" for job in ("train", "analyze")},
    "score.reference_model": "score.model (the student's ModelConfig) or ReferenceConfig.model",
    **{f"{job}.loss_chunk_size": "ModelConfig.loss_chunk_size"
       for job in ("train", "score", "bench", "analyze")},
    **{f"{job}.ratio": "SelectionConfig.ratio" for job in ("demo", "experiment", "analyze", "bench")},
}
_NO_PARAMETER = re.compile(r"Configurable '(\w+)' doesn't have a parameter named '(\w+)'")
# Configurables that were renamed: any binding of the old name fails with one line.
RENAMED_CONFIGURABLES = {"math_eval": "eval"}
# gin: "No configurable matching 'old'.\n  In <file or bindings> line N\n    old.param = ..."
_NO_CONFIGURABLE = re.compile(r"No configurable matching '(\w+)'\.\n.*\n\s*\1\.(\w+)\s*=")


def _renamed(message: str) -> str | None:
    """The one line for a binding of a renamed parameter or configurable, or None."""
    match = _NO_PARAMETER.search(message)
    old = match and f"{match.group(1)}.{match.group(2)}"
    if old in RENAMED_BINDINGS:
        new = RENAMED_BINDINGS[old]
    else:
        match = _NO_CONFIGURABLE.search(message)
        if not match or match.group(1) not in RENAMED_CONFIGURABLES:
            return None
        old = f"{match.group(1)}.{match.group(2)}"
        new = f"{RENAMED_CONFIGURABLES[match.group(1)]}.{match.group(2)}"
    return f"{old} was renamed: bind {new} instead (e.g. --gin.{new.split()[0]}=...)"


class UsageError(ValueError):
    pass


class HelpRequested(Exception):
    pass


def parse_flags(argv: list[str]) -> tuple[list[str], list[str]]:
    """argv -> (gin files, gin bindings), in the order given."""
    files, bindings = [], []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            raise HelpRequested(USAGE)
        if arg.startswith("--gin_file"):
            value = arg.partition("=")[2] if "=" in arg else (args.pop(0) if args else "")
            if not value:
                raise UsageError("--gin_file needs a path, e.g. --gin_file=gin/demo.gin")
            files.append(value)
        elif arg.startswith("--gin."):
            name, eq, value = arg[len("--gin."):].partition("=")
            if not eq:
                raise UsageError(f"{arg!r} needs a value: --gin.{name}=VALUE")
            bindings.append(f"{name} = {_gin_literal(value)}")
        else:
            raise UsageError(f"unknown flag {arg!r}\n{USAGE}")
    return files, bindings


def _gin_literal(value: str) -> str:
    """Bare words and paths become strings, so --gin.train.run_dir=/tmp/x works unquoted."""
    if value.startswith(("@", "%")):  # a configurable reference or a macro
        return value
    try:
        gin.config_parser.ConfigParser(f"x = {value}", gin.config.ParserDelegate()).parse_statement()
        return value
    except (SyntaxError, ValueError, tokenize.TokenError):
        return repr(value)


def parse_config(files: list[str], bindings: list[str]):
    import slm_jax.jobs.registry  # noqa: F401  (registers every gin configurable)
    gin.add_config_file_search_path(REPO_ROOT)
    gin.add_config_file_search_path(os.getcwd())
    for path in files:
        found = next((p for p in (path, os.path.join(REPO_ROOT, path)) if os.path.exists(p)), None)
        if found is None:
            raise UsageError(f"--gin_file={path}: no such file")
        if os.path.isdir(found):
            inside = sorted(n for n in os.listdir(found) if n.endswith(".gin"))[:3]
            raise UsageError(f"--gin_file={path} is a directory; name a .gin file"
                             + (f" in it (e.g. {', '.join(inside)})" if inside else ""))
    try:
        gin.parse_config_files_and_bindings(files, bindings, finalize_config=False)
    except tokenize.TokenError as e:  # gin's tokenizer: unbalanced brackets, open strings
        raise UsageError(_unreadable_gin(files, bindings, e)) from e
    except ValueError as e:
        renamed = _renamed(str(e))
        if renamed:
            raise UsageError(renamed) from e
        raise
    if _bound_job() == "compile":   # it reads no paths: the run file's required ones may stay
        from slm_jax.jobs import compile as compile_job
        compile_job.fill_required_macros()
    gin.finalize()


def _bound_job() -> str | None:
    try:
        return gin.query_parameter("run.job")
    except ValueError:
        return None


def _unreadable_gin(files: list[str], bindings: list[str], err: tokenize.TokenError) -> str:
    """Which file (or binding) gin could not tokenise, and where."""
    for path in files:
        path = path if os.path.exists(path) else os.path.join(REPO_ROOT, path)
        with open(path, encoding="utf-8") as f:
            try:
                list(tokenize.generate_tokens(f.readline))
            except tokenize.TokenError as e:
                return (f"--gin_file={path}: {e.args[0]} at line {e.args[1][0]} (a bracket or "
                        "string opened above it is never closed); fix the gin file.")
    return f"a --gin. binding cannot be read ({err.args[0]}): {bindings}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    console.setup()
    try:
        import slm_jax.jobs.registry  # noqa: F401  (configurables first, so flags can reference them)
        files, bindings = parse_flags(argv)
        parse_config(files or [DEFAULT_GIN_FILE], bindings)
        from slm_jax.parallel import distributed
        distributed.initialize_distributed()
        from slm_jax.jobs import registry as jobs
        jobs.run()
    except HelpRequested as e:
        print(str(e))
        return 0
    except UsageError as e:
        print(str(e), file=sys.stderr)
        return 2
    except (ValueError, RuntimeError, SyntaxError, FileNotFoundError) as e:
        # The layers below name a binding as gin does; here the fix reads as a flag.
        return cli_errors.report("slm_jax", e, binding_flag="--gin.")
    return 0


if __name__ == "__main__":
    console.filter_native_stderr()
    exit_code = main()
    if exit_code:   # the refusal's line is the last thing on the console
        console.quiet_after_refusal()
    sys.exit(exit_code)
