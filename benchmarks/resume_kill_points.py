"""How often does a run SIGKILLed at a random point resume bit-exact?

    python benchmarks/resume_kill_points.py --trials 10 [--seed 0] [--work_dir /tmp/kill]

The tiny demo-corpus run of tests/e2e/test_resume.py (8 steps, a checkpoint every
2, async saves) runs once uninterrupted. Each trial then starts the same run,
SIGKILLs it at a random moment -- after a random logged step plus a random
delay of up to one second, so kills land inside steps, async checkpoint
writes (params, optimizer and data state in one commit) alike -- restarts it once, and compares per-step
loss, selected_loss and grad_norm in metrics.jsonl and the final params with
the uninterrupted run. Prints one line per trial and "k of N bit-exact".
"""

from __future__ import annotations

import argparse
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tests.e2e.test_resume import NUM_STEPS, command, final_params, losses  # noqa: E402
from tests.tiny_corpus import tiny_corpus  # noqa: E402


def make_data(root: str):
    paths, vocab = tiny_corpus(pathlib.Path(root), seed=4)
    return paths.web_tfrecord, vocab


def kill_randomly(data, run_dir: str, rng: random.Random) -> str:
    """Starts the run, SIGKILLs it after a random step plus a random delay; describes where."""
    step, delay = rng.randint(1, NUM_STEPS - 1), rng.uniform(0.0, 1.0)
    proc = subprocess.Popen(command(data, run_dir), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})  # see each step as logged
    for line in proc.stdout:
        if f"step {step}/" in line:
            time.sleep(delay)
            break
    finished = proc.poll() is not None
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=300)
    if finished:
        return f"finished before the kill {delay:.2f}s after step {step}"
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    ckpts = sorted(os.listdir(ckpt_dir)) if os.path.isdir(ckpt_dir) else []
    logged = max(losses(run_dir), default=0) if os.path.exists(
        os.path.join(run_dir, "metrics.jsonl")) else 0
    return (f"killed {delay:.2f}s after step {step} was printed (last logged step {logged}, "
            f"checkpoints left: {ckpts})")


def compare(run_a: str, run_b: str) -> str | None:
    """None when bit-exact, else what differs."""
    la, lb = losses(run_a), losses(run_b)
    if sorted(la) != sorted(lb):
        return f"logged steps differ: {sorted(la)} vs {sorted(lb)}"
    for step in la:
        for key in ("loss", "selected_loss", "grad_norm"):
            if la[step][key] != lb[step][key]:
                return f"step {step} {key}: {la[step][key]} vs {lb[step][key]}"
    import jax
    diff = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree.leaves(final_params(run_a)),
                               jax.tree.leaves(final_params(run_b))))
    return None if diff == 0 else f"final params differ by up to {diff:.3g}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work_dir", default=None)
    args = parser.parse_args()
    work = args.work_dir or tempfile.mkdtemp(prefix="resume_kill_points_")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    data = make_data(os.path.join(work, "data"))
    reference = os.path.join(work, "uninterrupted")
    shutil.rmtree(reference, ignore_errors=True)
    subprocess.run(command(data, reference), cwd=REPO, check=True, capture_output=True,
                   timeout=600)
    rng = random.Random(args.seed)
    exact = 0
    for trial in range(args.trials):
        run_dir = os.path.join(work, f"trial_{trial}")
        shutil.rmtree(run_dir, ignore_errors=True)
        where = kill_randomly(data, run_dir, rng)
        restart = subprocess.run(command(data, run_dir), cwd=REPO, capture_output=True, text=True,
                                 timeout=600)
        problem = (f"restart exited {restart.returncode}: {restart.stderr[-300:]}"
                   if restart.returncode else compare(reference, run_dir))
        exact += problem is None
        print(f"trial {trial}: {where}: {'bit-exact' if problem is None else problem}", flush=True)
    print(f"{exact} of {args.trials} bit-exact")
    return 0 if exact == args.trials else 1


if __name__ == "__main__":
    sys.exit(main())
