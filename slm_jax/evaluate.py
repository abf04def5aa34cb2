"""Few-shot math accuracy of a checkpoint: a thin front end to the `eval` job.

    python -m slm_jax.evaluate --ckpt_dir runs/x/checkpoints --gin_file gin/models/small.gin \\
      --tokenizer spm.model --data gsm8k=gsm8k_test.jsonl --data math=math_test.jsonl \\
      --out runs/x/eval [--n_shot 8] [--max_new_tokens 512] [--batch_size 16] \\
      [--num_problems 100] [--gin.NAME=VALUE ...]

Same as `python -m slm_jax.main --gin_file=... --gin.run.job=eval --gin.math_eval.*=...`
(see slm_jax/jobs/math_eval.py); writes predictions_{name}.jsonl, results.json, results.md.
"""

from __future__ import annotations

import argparse
import sys


def to_main_flags(argv: list[str]) -> list[str]:
    parser = argparse.ArgumentParser(prog="python -m slm_jax.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt_dir", required=True, help="checkpoints/ dir or one step's dir")
    parser.add_argument("--gin_file", action="append", required=True, help="model gin file(s)")
    parser.add_argument("--tokenizer", required=True, help="SentencePiece .model")
    parser.add_argument("--data", action="append", required=True, help="NAME=PATH.jsonl")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--n_shot", type=int)
    parser.add_argument("--max_new_tokens", type=int)
    parser.add_argument("--batch_size", type=int)
    parser.add_argument("--num_problems", type=int)
    args, rest = parser.parse_known_args(argv)
    unknown = [a for a in rest if not a.startswith("--gin.")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    flags = [f"--gin_file={f}" for f in args.gin_file] + [
        "--gin.run.job=eval", f"--gin.math_eval.checkpoint={args.ckpt_dir}",
        f"--gin.math_eval.vocab_path={args.tokenizer}",
        f"--gin.math_eval.datasets={','.join(args.data)}", f"--gin.math_eval.out_dir={args.out}"]
    for name in ("n_shot", "max_new_tokens", "batch_size", "num_problems"):
        if getattr(args, name) is not None:
            flags.append(f"--gin.math_eval.{name}={getattr(args, name)}")
    return flags + rest


def main(argv: list[str] | None = None) -> int:
    from slm_jax import main as main_lib
    return main_lib.main(to_main_flags(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
