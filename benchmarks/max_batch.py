"""The largest batch whose train step fits in device memory, and its speed there.

    python benchmarks/max_batch.py --gin_file=gin/bench/gpu_tinyllama_1b.gin \
        [--mode slm_online] [--unit 1] [--limit 256] [--gin.X=Y ...]

Runs `python -m slm_jax.bench` for one mode (default slm_online, so the reference's
params are resident beside the student's state) at batch sizes of 1, 2, 4, ... times
`--unit` (the mesh's data-parallel size: every device needs whole rows) until one runs
out of memory, then bisects between the last that fitted and the first that did
not. Each try is a fresh process, so a failed one leaves no memory behind. Prints one
JSON line per try, then a summary with the largest batch and its bench line (tokens/s,
MFU, peak memory). An error other than running out of memory stops the search.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What XLA says when a program does not fit ("Out of memory while trying to allocate" on
# GPU, "Ran out of memory in memory space hbm" on TPU); SIGKILL is the host's OOM killer.
OUT_OF_MEMORY = ("RESOURCE_EXHAUSTED", "out of memory", "Out of memory")


def largest_fitting(fits: Callable[[int], bool], start: int, limit: int) -> int:
    """The largest b in [start, limit] with fits(b), assuming fits is monotone
    (True up to some b, False after); 0 when even `start` does not fit."""
    if not fits(start):
        return 0
    low, high = start, None  # low fits; high (once known) does not
    while high is None:
        candidate = min(low * 2, limit)
        if candidate == low:
            return low
        if fits(candidate):
            low = candidate
        else:
            high = candidate
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low


def try_batch(batch: int, mode: str, gin_args: list[str], tries: list[dict]) -> bool:
    command = [sys.executable, "-m", "slm_jax.bench", *gin_args,
               f"--gin.bench.batch_size={batch}", f"--gin.bench.modes=('{mode}',)",
               "--gin.bench.select_tokens_count=0"]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode == 0 and lines:
        tries.append({"batch_size": batch, "fits": True, **lines[0]})
    elif proc.returncode == -9 or any(marker in proc.stderr for marker in OUT_OF_MEMORY):
        tries.append({"batch_size": batch, "fits": False})
    else:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"max_batch: batch {batch} failed for a reason other than memory "
                         f"(exit {proc.returncode}); see the error above")
    print(json.dumps({**tries[-1], "mode": "try"}), flush=True)
    return tries[-1]["fits"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gin_file", action="append", required=True)
    parser.add_argument("--mode", default="slm_online", choices=["clm", "slm_online", "slm_offline"])
    parser.add_argument("--unit", type=int, default=1,
                        help="batch sizes are multiples of this (the data-parallel size)")
    parser.add_argument("--limit", type=int, default=256, help="largest batch size to try")
    args, overrides = parser.parse_known_args()
    if args.unit < 1 or args.limit < args.unit:
        parser.error(f"need 1 <= --unit <= --limit (got --unit {args.unit}, --limit {args.limit})")
    gin_args = [f"--gin_file={path}" for path in args.gin_file] + overrides
    tries: list[dict] = []
    best = args.unit * largest_fitting(
        lambda units: try_batch(units * args.unit, args.mode, gin_args, tries),
        1, args.limit // args.unit)
    best_line = next((t for t in tries if t["fits"] and t["batch_size"] == best), None)
    print(json.dumps({"mode": "summary", "bench_mode": args.mode, "largest_batch": best,
                      "limit": args.limit, "at_largest": best_line}), flush=True)


if __name__ == "__main__":
    main()
