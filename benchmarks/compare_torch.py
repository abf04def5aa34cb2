"""slm-jax's SLM step against the same step in PyTorch + transformers, in one run.

    pip install -r requirements.txt -r requirements-test.txt
    python benchmarks/compare_torch.py [--timed_steps 5]

Runs `python -m slm_jax.bench` on gin/bench/cpu_small.gin (CLM and SLM-online)
and benchmarks/torch_slm_step.py on the same shapes, one after the other on
an otherwise idle machine, and prints both JSON lines per mode and one summary
line: tokens/s of each and slm-jax / torch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def json_lines(command: list[str]) -> list[dict]:
    out = subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timed_steps", type=int, default=5)
    args = parser.parse_args()
    jax_lines = json_lines([
        sys.executable, "-m", "slm_jax.bench", "--gin_file=gin/bench/cpu_small.gin",
        "--gin.bench.modes=('clm', 'slm_online')", "--gin.bench.select_tokens_count=0",
        f"--gin.bench.timed_steps={args.timed_steps}"])
    torch_lines = json_lines([sys.executable, os.path.join(HERE, "torch_slm_step.py"),
                              f"--timed_steps={args.timed_steps}"])
    for line in jax_lines + torch_lines:
        print(json.dumps({"framework": line.get("framework", "slm_jax"), **line}), flush=True)
    by_mode = {(line.get("framework", "slm_jax"), line["mode"]): line
               for line in jax_lines + torch_lines}
    summary = {"mode": "summary"}
    for mode in ("clm", "slm_online"):
        jax_tps = by_mode[("slm_jax", mode)]["tokens_per_s"]
        torch_tps = by_mode[("torch", mode)]["tokens_per_s"]
        summary.update({f"{mode}_slm_jax_tokens_per_s": jax_tps,
                        f"{mode}_torch_tokens_per_s": torch_tps,
                        f"{mode}_slm_jax_over_torch": jax_tps / torch_tps})
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
