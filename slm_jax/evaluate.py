"""Few-shot accuracy of a checkpoint: a thin front end to the `eval` job.

Built-in GSM8K/MATH prompts over jsonl files:

    python -m slm_jax.evaluate --ckpt_dir runs/x/checkpoints --gin_file gin/models/small.gin \\
      --tokenizer spm.model --data gsm8k=gsm8k_test.jsonl --data math=math_test.jsonl \\
      --out runs/x/eval [--n_shot 8] [--max_new_tokens 512] [--batch_size 16] \\
      [--num_problems 100] [--gin.NAME=VALUE ...]

Tool-integrated (math-evaluation-harness's `tora` mode: the model writes Python, a box runs it):

    python -m slm_jax.evaluate --ckpt_dir OUT/checkpoints --tokenizer OUT --prompt_type tora \\
      --data_dir math-evaluation-harness/data --data_names gsm8k,math --out OUT/tora

lm-evaluation-harness tasks through the slm_jax backend (docs/evaluation.md):

    python -m slm_jax.evaluate --ckpt_dir OUT/checkpoints --tokenizer OUT \\
      --tasks gsm8k_cot,minerva_math --out OUT/eval [--num_problems 100] \\
      [--include_path my_tasks/] [--gen_kwargs max_gen_toks=512]

Same as `python -m slm_jax.main --gin_file=... --gin.run.job=eval --gin.eval.*=...`
(see slm_jax/jobs/evaluation.py). Without --gin_file the model.gin (converted) or
config.gin (a train run) beside the checkpoints gives the ModelConfig.
"""

from __future__ import annotations

import argparse
import sys

_PASSED_ON = ("n_shot", "max_new_tokens", "batch_size", "num_problems", "include_path",
              "gen_kwargs", "prompt_type", "data_dir", "data_names", "max_rounds")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m slm_jax.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt_dir", required=True, help="checkpoints/ dir or one step's dir")
    parser.add_argument("--gin_file", action="append",
                        help="model gin file(s); default: model.gin/config.gin beside ckpt_dir")
    parser.add_argument("--tokenizer", required=True,
                        help="SentencePiece .model, or tokenizer.json or its directory")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", action="append", help="NAME=PATH.jsonl (built-in prompts)")
    source.add_argument("--tasks", help="lm-eval task names, comma-separated")
    source.add_argument("--data_dir", help="a math-evaluation-harness data/ directory "
                                           "(<name>/test.jsonl), with --data_names")
    parser.add_argument("--data_names", help="benchmarks in --data_dir, e.g. gsm8k,math")
    parser.add_argument("--prompt_type", choices=("cot", "tora"),
                        help="tora: the harness's tool-integrated mode (programs run in a box)")
    parser.add_argument("--max_rounds", type=int, help="tora: executions per problem (4)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--n_shot", type=int)
    parser.add_argument("--max_new_tokens", type=int)
    parser.add_argument("--batch_size", type=int)
    parser.add_argument("--num_problems", type=int)
    parser.add_argument("--include_path", help="lm-eval: a directory of your own task YAMLs")
    parser.add_argument("--gen_kwargs", help="lm-eval: generation settings, e.g. max_gen_toks=512")
    return parser


def _gin_files(args, parser) -> list[str]:
    if args.gin_file:
        return args.gin_file
    from slm_jax.hf.conversion import find_model_gin
    from slm_jax.hf.mapping import ConversionError
    try:
        return find_model_gin(args.ckpt_dir)
    except ConversionError as e:
        parser.error(str(e))


def to_main_flags(argv: list[str]) -> list[str]:
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    unknown = [a for a in rest if not a.startswith("--gin.")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    source = (f"--gin.eval.datasets={','.join(args.data)}" if args.data
              else f"--gin.eval.tasks={args.tasks}" if args.tasks
              else f"--gin.eval.data_dir={args.data_dir}")
    flags = [f"--gin_file={f}" for f in _gin_files(args, parser)] + [
        "--gin.run.job=eval", f"--gin.eval.checkpoint={args.ckpt_dir}",
        f"--gin.eval.vocab_path={args.tokenizer}", source,
        f"--gin.eval.out_dir={args.out}"]
    for name in _PASSED_ON:
        if getattr(args, name) is not None:
            flags.append(f"--gin.eval.{name}={getattr(args, name)}")
    return flags + rest


def main(argv: list[str] | None = None) -> int:
    from slm_jax import main as main_lib
    return main_lib.main(to_main_flags(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    from slm_jax import console
    console.filter_native_stderr()
    sys.exit(main())
