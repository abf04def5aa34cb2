"""slm-jax's SLM step against the same step in PyTorch + transformers, in one run.

    pip install -r requirements.txt -r requirements-test.txt
    python benchmarks/compare_torch.py [--timed_steps 5] [--rounds 3]

Runs, one after the other on an otherwise idle machine and on the shapes of
gin/bench/cpu_small.gin (fp32 student):
  1. `python -m slm_jax.bench` CLM and SLM-online, reference forward in bf16
     (the gin file's `ReferenceConfig.dtype`, as in training);
  2. benchmarks/torch_slm_step.py CLM and SLM-online, fp32 reference (the usual way);
  3. `python -m slm_jax.bench` SLM-online again with an fp32 reference, so the
     comparison is also there with the same reference precision as torch.
Prints every JSON line and one summary line: median tokens/s of each over the rounds and
slm-jax / torch (also per round). This VM's step times drift by 10-20% from minute to
minute, so `--rounds 3` interleaves the runs and takes medians.
`--torch_reference_dtype bfloat16` gives torch a bf16 reference too.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def json_lines(command: list[str]) -> list[dict]:
    out = subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def bench_lines(timed_steps: int, *bindings: str) -> list[dict]:
    return json_lines([sys.executable, "-m", "slm_jax.bench", "--gin_file=gin/bench/cpu_small.gin",
                       "--gin.bench.select_tokens_count=0", f"--gin.bench.timed_steps={timed_steps}",
                       *bindings])


def one_round(args) -> list[dict]:
    jax_lines = bench_lines(args.timed_steps, "--gin.bench.modes=('clm', 'slm_online')")
    torch_lines = json_lines([sys.executable, os.path.join(HERE, "torch_slm_step.py"),
                              f"--timed_steps={args.timed_steps}",
                              f"--reference_dtype={args.torch_reference_dtype}"])
    fp32_ref_lines = bench_lines(args.timed_steps, "--gin.bench.modes=('slm_online',)",
                                 "--gin.ReferenceConfig.dtype='float32'")
    for line in fp32_ref_lines:
        line["mode"] = "slm_online_fp32_reference"
    return [{"framework": line.get("framework", "slm_jax"), **line}
            for line in jax_lines + torch_lines + fp32_ref_lines]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timed_steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat the three runs, interleaved, to average out a noisy machine")
    parser.add_argument("--torch_reference_dtype", default="float32",
                        choices=["float32", "bfloat16"])
    args = parser.parse_args()
    tokens_per_s = collections.defaultdict(list)
    for round_index in range(args.rounds):
        for line in one_round(args):
            print(json.dumps({"round": round_index, **line}), flush=True)
            tokens_per_s[(line["framework"], line["mode"])].append(line["tokens_per_s"])
    summary = {"mode": "summary", "rounds": args.rounds,
               "torch_reference_dtype": args.torch_reference_dtype}
    for mode, torch_mode in (("clm", "clm"), ("slm_online", "slm_online"),
                             ("slm_online_fp32_reference", "slm_online")):
        jax_tps, torch_tps = tokens_per_s[("slm_jax", mode)], tokens_per_s[("torch", torch_mode)]
        summary.update({
            f"{mode}_slm_jax_tokens_per_s": statistics.median(jax_tps),
            f"{mode}_torch_tokens_per_s": statistics.median(torch_tps),
            f"{mode}_slm_jax_over_torch": statistics.median(jax_tps) / statistics.median(torch_tps),
            f"{mode}_slm_jax_over_torch_by_round": [round(j / t, 3)
                                                    for j, t in zip(jax_tps, torch_tps)]})
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
