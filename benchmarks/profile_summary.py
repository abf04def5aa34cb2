"""Where a train step's time goes: traces the bench's timed steps (jax.profiler) and
prints the XLA ops that take the most time, per mode.

    python benchmarks/profile_summary.py [--gin_file gin/bench/cpu_small.gin] [--top 12]
        [--modes clm,slm_online] [--keep DIR]

The trace is the one `python -m slm_jax.bench --gin.bench.profile_dir=DIR` writes
(TensorBoard's profile plugin opens DIR; Perfetto opens DIR/**/perfetto_trace.json.gz);
this script reads the Perfetto JSON: events inside each `train_step_<mode>` annotation
are grouped by op name without its numeric suffix (fusion.12 -> fusion); ops of one
step run on several threads, so shares are of the op time summed over threads. Profiling
slows a CPU step down (each op is recorded): read the shares, not the times.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_events(profile_dir: str) -> list[dict]:
    paths = glob.glob(os.path.join(profile_dir, "**", "perfetto_trace.json.gz"), recursive=True)
    if not paths:
        raise SystemExit(f"no perfetto_trace.json.gz under {profile_dir}")
    with gzip.open(sorted(paths)[-1]) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    return [e for e in events if e.get("ph") == "X" and "dur" in e]


def summarize(events: list[dict], top: int) -> dict:
    """{mode: {"steps", "step_ms", "ops": [(op, ms per step, share)]}} from complete events."""
    steps = [e for e in events if e["name"].startswith("train_step_")]
    ops_by_mode: dict = {}
    for step in steps:
        mode = step["name"][len("train_step_"):]
        entry = ops_by_mode.setdefault(mode, {"steps": 0, "step_us": 0.0,
                                              "ops": collections.Counter()})
        entry["steps"] += 1
        entry["step_us"] += step["dur"]
        start, end = step["ts"], step["ts"] + step["dur"]
        for e in events:
            if e is step or e["name"].startswith("train_step_") or not start <= e["ts"] < end:
                continue
            # XLA op events (CPU thunks carry hlo_op / hlo_module args); host frames are skipped.
            args = e.get("args") or {}
            if "hlo_op" not in args and "hlo_module" not in args:
                continue
            entry["ops"][re.sub(r"[.\d]+$", "", e["name"])] += e["dur"]
    summary = {}
    for mode, entry in ops_by_mode.items():
        # Ops of one step run on several threads at once: shares are of the summed op time.
        n, op_total = entry["steps"], sum(entry["ops"].values())
        summary[mode] = {"steps": n, "step_ms": entry["step_us"] / n / 1e3,
                         "op_ms": op_total / n / 1e3, "ops": [
                             (op, us / n / 1e3, us / op_total)
                             for op, us in entry["ops"].most_common(top)]}
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gin_file", default="gin/bench/cpu_small.gin")
    parser.add_argument("--modes", default="clm,slm_online")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--timed_steps", type=int, default=3)
    parser.add_argument("--keep", default=None, help="keep the trace in this directory")
    args = parser.parse_args(argv)
    profile_dir = args.keep or tempfile.mkdtemp(prefix="slm_profile_")
    modes = "[" + ", ".join(repr(m) for m in args.modes.split(",")) + "]"
    subprocess.run([sys.executable, "-m", "slm_jax.bench", f"--gin_file={args.gin_file}",
                    f"--gin.bench.profile_dir={profile_dir}", f"--gin.bench.modes={modes}",
                    f"--gin.bench.timed_steps={args.timed_steps}",
                    "--gin.bench.select_tokens_count=0"], check=True, cwd=REPO)
    for mode, s in summarize(load_events(profile_dir), args.top).items():
        print(f"\n{mode}: {s['steps']} traced steps, {s['step_ms']:.1f} ms/step wall, "
              f"{s['op_ms']:.1f} ms/step of XLA ops summed over threads")
        print(f"  {'op':40s} {'thread-ms':>9s} {'share':>7s}")
        for op, ms, share in s["ops"]:
            print(f"  {op[:40]:40s} {ms:9.1f} {share:7.1%}")
    print(f"\ntrace: {profile_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
