"""The paper runs compiled for TPU slices (the `compile` job), as the markdown table of
docs/performance.md. Needs libtpu (`pip install -r requirements-tpu.txt`); no TPU.

    python benchmarks/tpu_compile_table.py --out_dir runs/tpu_compile \\
        --runs rho1_math_1b rho1_math_7b rho1_math_qwen2_5_1_5b --topologies v5p:4x4x4 v6e:16x16

Each (run, topology) is one `python -m slm_jax.main --gin_file=gin/runs/RUN.gin
--gin.run.job=compile --gin.compile.topology=T --gin.compile.out_dir=OUT/RUN@T` (and a CLM
twin of the run, `--gin.SelectionConfig.mode=clm`, for the SLM/CLM columns); a directory that
already holds compile.jsonl is read, not compiled again (delete it to recompile).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def compile_run(run: str, topology: str, out: Path, clm: bool, read_only: bool) -> list[dict]:
    result_file = out / "compile.jsonl"
    if read_only and not result_file.exists():
        return []
    if not result_file.exists():
        out.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "slm_jax.main", f"--gin_file=gin/runs/{run}.gin",
                   "--gin.run.job=compile", f"--gin.compile.topology={topology}",
                   f"--gin.compile.out_dir={out}"] + (["--gin.SelectionConfig.mode=clm"] if clm else [])
        start = time.perf_counter()
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        (out / "wall_s.txt").write_text(f"{time.perf_counter() - start:.0f}\n")
        if not result_file.exists():
            sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]


def _row(rows: list[dict], name: str) -> dict | None:
    return next((r for r in rows if r["program"] == name), None)


def table(results: dict) -> str:
    lines = ["| run | slice (chips) | program | HBM GiB/chip (of) | compile s | compiler / analytic "
             "FLOPs | est. step s | MFU bound | collectives GB/chip/step | SLM / CLM FLOPs, est. time |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (run, topology), (slm, clm) in results.items():
        for r in slm:
            if r["program"] == "search":
                continue
            hbm = r.get("hbm") or {}
            flops = r.get("flops") or {}
            collective_gb = sum(c["bytes"] for c in r.get("collectives", {}).values()) / 1e9
            versus = "-"
            base = clm and _row(clm, r["program"])
            if r["program"] == "train_step" and base and base.get("flops") and flops:
                versus = f"{flops['analytic'] / base['flops']['analytic']:.2f}, " + (
                    f"{r['est_step_s'] / base['est_step_s']:.2f}"
                    if r.get("est_step_s") and base.get("est_step_s") else "-")
            fits = "" if r.get("fits") else " **no fit**"
            seconds = r.get("est_step_s")
            lines.append(
                f"| {run} | {topology} ({r.get('chips', '-')}) | {r['program']} | "
                f"{(hbm.get('total') or r.get('needed') or 0) / 2**30:.1f} "
                f"({(hbm.get('capacity') or r.get('capacity') or 0) / 2**30:.0f}){fits} | "
                f"{r.get('compile_s', '-')} | {flops.get('compiler_vs_analytic') or '-'}"
                f"{'*' if r.get('compiler_loops') and flops else ''} | "
                f"{f'{seconds:.3f}' if seconds else '-'} | {r.get('mfu_bound') or '-'} | "
                f"{collective_gb:.1f} | {versus} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out_dir", default="runs/tpu_compile")
    parser.add_argument("--runs", nargs="+",
                        default=["rho1_math_1b", "rho1_math_7b", "rho1_math_qwen2_5_1_5b"])
    parser.add_argument("--topologies", nargs="+", default=["v5p:4x4x4", "v6e:16x16"])
    parser.add_argument("--no_clm", action="store_true", help="skip the CLM twins")
    parser.add_argument("--read_only", action="store_true",
                        help="compile nothing: tabulate what --out_dir holds")
    args = parser.parse_args()
    results = {}
    for run in args.runs:
        for topology in args.topologies:
            out = Path(args.out_dir) / f"{run}@{topology}"
            slm = compile_run(run, topology, out, False, args.read_only)
            clm = None if args.no_clm else compile_run(run, topology, Path(f"{out}-clm"), True,
                                                       args.read_only)
            if slm:
                results[(run, topology)] = (slm, clm)
    print(table(results))


if __name__ == "__main__":
    main()
