"""How often does a run stopped at a random point resume bit-exact?

    python benchmarks/resume_kill_points.py --trials 10 [--signals KILL,INT] [--seed 0]
        [--work_dir /tmp/kill]

The tiny demo-corpus run of tests/e2e/test_resume.py (8 steps, a checkpoint every
2, async saves) runs once uninterrupted. Each trial then starts the same run,
sends it a signal at a random moment -- after a random logged step plus a random
delay of up to one second, so signals land inside steps, async checkpoint
writes (params, optimizer and data state in one commit) alike -- restarts it once, and compares per-step
loss, selected_loss and grad_norm in metrics.jsonl and the final params with
the uninterrupted run. Prints one line per trial and "k of N bit-exact; m stale run-directory locks" (the run
directory must be free again after every trial: a SIGKILLed run's flock dies with it).

--signals picks the signals, used in turn by the trials: KILL (default; nothing
runs after it), INT (Ctrl-C) and TERM (a TPU maintenance event or spot reclaim),
which the trainer answers by finishing the step, checkpointing and exiting 0.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import random
import re
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
    """(files, tokenizer, compilation cache) as tests/e2e/test_resume.py's `command` takes
    them: every run and restart shares one compilation cache, as in the test."""
    paths, vocab = tiny_corpus(pathlib.Path(root), seed=4)
    return paths.web_tfrecord, vocab, os.path.join(root, "jax_cache")


SIGNALS = {"KILL": signal.SIGKILL, "INT": signal.SIGINT, "TERM": signal.SIGTERM}


def parse_signals(text: str) -> list[str]:
    names = [name.strip().upper().removeprefix("SIG") for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SIGNALS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a comma-separated list of "
                                         f"{', '.join(SIGNALS)}")
    return names


def how_it_ended(returncode: int, output: str, name: str) -> str:
    """What the run did with the signal: SIGKILL always kills; INT and TERM should end in a
    checkpoint and exit 0 (anything else is worth seeing, and the restart must cope)."""
    if name == "KILL":
        return "killed"
    if returncode == 0:
        return "stopped cleanly (exit 0)"
    if "KeyboardInterrupt" in output:  # Python's own SIGINT handler: no trainer handler was set
        frames = re.findall(r'File "[^"]*/(slm_jax/[^"]+)", line (\d+), in (\w+)', output)
        where = " at {}:{} ({})".format(*frames[-1]) if frames else ""
        return f"exited {returncode} by KeyboardInterrupt{where}"
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    return f"exited {returncode}{': ' + lines[-1][-200:] if lines else ''}"


def signal_randomly(data, run_dir: str, rng: random.Random, name: str = "KILL") -> str:
    """Starts the run, sends SIG`name` after a random step plus a random delay; describes where
    it landed and how the run ended."""
    step, delay = rng.randint(1, NUM_STEPS - 1), rng.uniform(0.0, 1.0)
    proc = subprocess.Popen(command(data, run_dir), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})  # see each step as logged
    for line in proc.stdout:
        if f"step {step}/" in line:
            time.sleep(delay)
            break
    finished = proc.poll() is not None
    proc.send_signal(SIGNALS[name])
    rest, _ = proc.communicate(timeout=300)  # read on: a full pipe would block the checkpoint
    if finished:
        return f"finished before the SIG{name} {delay:.2f}s after step {step}"
    ended = how_it_ended(proc.returncode, rest, name)
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    ckpts = sorted(os.listdir(ckpt_dir)) if os.path.isdir(ckpt_dir) else []
    logged = max(losses(run_dir), default=0) if os.path.exists(
        os.path.join(run_dir, "metrics.jsonl")) else 0
    return (f"SIG{name} {delay:.2f}s after step {step} was printed, {ended} (last logged "
            f"step {logged}, checkpoints left: {ckpts})")


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
    parser.add_argument("--signals", type=parse_signals, default=["KILL"],
                        help="comma-separated signals the trials take in turn: KILL, INT "
                             "(Ctrl-C), TERM (default KILL)")
    args = parser.parse_args()
    work = args.work_dir or tempfile.mkdtemp(prefix="resume_kill_points_")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    data = make_data(os.path.join(work, "data"))
    reference = os.path.join(work, "uninterrupted")
    shutil.rmtree(reference, ignore_errors=True)
    subprocess.run(command(data, reference), cwd=REPO, check=True, capture_output=True,
                   timeout=600)
    rng = random.Random(args.seed)
    exact = stale_locks = 0
    for trial in range(args.trials):
        run_dir = os.path.join(work, f"trial_{trial}")
        shutil.rmtree(run_dir, ignore_errors=True)
        where = signal_randomly(data, run_dir, rng, args.signals[trial % len(args.signals)])
        restart = subprocess.run(command(data, run_dir), cwd=REPO, capture_output=True, text=True,
                                 timeout=600)
        problem = (f"restart exited {restart.returncode}: {restart.stderr[-300:]}"
                   if restart.returncode else compare(reference, run_dir))
        exact += problem is None
        stale = stale_lock(run_dir, where)
        stale_locks += stale is not None
        print(f"trial {trial}: {where}: {'bit-exact' if problem is None else problem}"
              f"{'; ' + stale if stale else ''}", flush=True)
    print(f"{exact} of {args.trials} bit-exact; {stale_locks} stale run-directory locks")
    return 0 if exact == args.trials and not stale_locks else 1


def stale_lock(run_dir: str, where: str) -> str | None:
    """None when nobody holds the run directory once its processes are gone: the killed run's
    lock went with it (the restart above could take it too), and the restart released its own."""
    from slm_jax.parallel import ownership
    try:
        with ownership.own(run_dir, binding="train.run_dir"):
            return None
    except ownership.RunOwnedError as e:
        return f"stale lock after {where.split(',')[0]}: {e}"


if __name__ == "__main__":
    sys.exit(main())
