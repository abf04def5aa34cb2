"""Bit-exact resume: a run killed with SIGKILL and restarted equals an uninterrupted run."""

import json
import re
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from tests.tiny_corpus import tiny_corpus

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_STEPS = 8


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    paths, vocab = tiny_corpus(root, seed=4)
    # One persistent compilation cache for every process of this module: a restart loads the
    # compiled step (same executable, same bits) instead of compiling it again.
    return paths.web_tfrecord, vocab, str(root / "jax_cache")


def command(data, run_dir):
    pattern, vocab, cache = data
    return [sys.executable, "-m", "slm_jax.main", "--gin_file=gin/models/tiny.gin",
            "--gin.run.job=train", f"--gin.train.run_dir={run_dir}",
            f"--gin.run.compilation_cache_dir={cache}",
            f"--gin.train.num_steps={NUM_STEPS}", f"--gin.DataConfig.file_pattern={pattern}",
            f"--gin.DataConfig.vocab_path={vocab}", "--gin.DataConfig.seq_len=64",
            "--gin.DataConfig.global_batch_size=8", "--gin.train.log_every=1",
            "--gin.CheckpointConfig.every_steps=2", "--gin.CheckpointConfig.keep=10",
            "--gin.OptimizerConfig.learning_rate=3e-3"]


def losses(run_dir):
    """step -> metrics of the last time that step was logged."""
    lines = [json.loads(ln) for ln in open(os.path.join(run_dir, "metrics.jsonl"))]
    return {ln["step"]: ln for ln in lines}


def final_params(run_dir):
    import orbax.checkpoint as ocp
    path = os.path.join(run_dir, "checkpoints", str(NUM_STEPS), "params")
    return ocp.StandardCheckpointer().restore(path)


def kill_at(data, run_dir, step):
    """Starts a run and SIGKILLs it as soon as `step` is logged."""
    proc = subprocess.Popen(command(data, run_dir), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if f"step {step}/" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL


def assert_bitwise_equal(run_a, run_b):
    la, lb = losses(run_a), losses(run_b)
    assert sorted(la) == sorted(lb) == list(range(1, NUM_STEPS + 1))
    for step in la:
        for key in ["loss", "selected_loss", "grad_norm"]:
            assert la[step][key] == lb[step][key], (step, key)
    pa, pb = final_params(run_a), final_params(run_b)
    import jax
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("full") / "run"
    subprocess.run(command(data, run_dir), cwd=REPO, check=True, capture_output=True, timeout=300)
    return run_dir


def test_sigkill_and_restart_is_bit_exact(data, uninterrupted, tmp_path):
    # Killed twice: at step 3 (between the saves of steps 2 and 4), then, restarted, at step 6
    # (often while step 6's save is in flight); the last restart runs to the end.
    run_dir = tmp_path / "run"
    kill_at(data, run_dir, 3)
    kill_at(data, run_dir, 6)
    restarted = subprocess.run(command(data, run_dir), cwd=REPO, check=True, capture_output=True,
                               text=True, timeout=300)
    assert_bitwise_equal(uninterrupted, run_dir)
    # The data order came back from the positions saved inside the checkpoint, not a replay.
    assert all((step / "data_state").is_dir() for step in (run_dir / "checkpoints").iterdir()
               if step.name.isdigit())
    assert not (run_dir / "data_state").exists()
    assert "no saved data order" not in restarted.stderr


def test_a_checkpoint_torn_mid_write_is_ignored_on_restart(data, uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    kill_at(data, run_dir, 5)
    ckpts = run_dir / "checkpoints"
    # The kill often lands during the async save of step 4, leaving orbax's uncommitted
    # "4.orbax-checkpoint-tmp"; where that save finished, tear a later one by hand.
    if not any(".orbax-checkpoint-tmp" in name for name in os.listdir(ckpts)):
        shutil.copytree(ckpts / "4", ckpts / "6.orbax-checkpoint-tmp")
        (ckpts / "6.orbax-checkpoint-tmp" / "params" / "_METADATA").write_text("{torn")
    subprocess.run(command(data, run_dir), cwd=REPO, check=True, capture_output=True, timeout=300)
    assert_bitwise_equal(uninterrupted, run_dir)


def test_a_second_launch_into_a_running_run_is_refused_and_the_first_finishes_intact(
        data, uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    first = subprocess.Popen(command(data, run_dir), cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    for line in first.stdout:
        if "step 1/" in line:
            first.send_signal(signal.SIGSTOP)   # holds the run mid-way, whatever the machine's speed
            break
    try:
        second = subprocess.run(command(data, run_dir), cwd=REPO, capture_output=True, text=True,
                                timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
    first.communicate(timeout=300)
    assert second.returncode == 2, second.stderr[-2000:]
    assert second.stderr.strip().splitlines() == [
        line for line in second.stderr.strip().splitlines() if "is in use by another job" in line]
    assert f"pid {first.pid}" in second.stderr
    assert first.returncode == 0
    assert_bitwise_equal(uninterrupted, run_dir)


# A tmpfs in a mount namespace of its own (root, or user namespaces): room for two
# checkpoints, then more room for the restart.
_FULL_DISK = """
set -e
mkdir -p "$1/mnt"
mount -t tmpfs -o size=6m tmpfs "$1/mnt"
shift
code=0; "$@" > "$OUT/first.out" 2> "$OUT/first.err" || code=$?
echo $code > "$OUT/first.code"
(cd "$RUN_DIR/checkpoints" && find . -type f | sort | xargs sha256sum) > "$OUT/before.sha"
mount -o remount,size=64m "$RUN_DIR/.."
"$@" > "$OUT/second.out" 2> "$OUT/second.err"
cp -r "$RUN_DIR" "$OUT/run"
"""


def test_a_full_disk_stops_in_one_line_and_the_restart_with_space_is_bit_exact(
        data, uninterrupted, tmp_path):
    run_dir = tmp_path / "mnt" / "run"
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["unshare", "-m", "bash", "-c", _FULL_DISK, "full_disk", str(tmp_path),
                    *command(data, run_dir)], cwd=REPO, check=True, timeout=600,
                   env={**os.environ, "OUT": str(out), "RUN_DIR": str(run_dir)})
    assert (out / "first.code").read_text().strip() == "2"
    err = (out / "first.err").read_text().strip().splitlines()
    print(err)
    assert len(err) == 1 and re.fullmatch(
        r"slm_jax: error: no space left in .*/mnt/run/checkpoints for the checkpoint of step 6 "
        r"\(it needs ~[\d.]+ MB, [\d.]+ MB free\); the checkpoint of step 4 is intact; free "
        r"space there \(or write elsewhere\) and run the same command again\..*", err[0]), err
    saved = sorted(p.name for p in (out / "run" / "checkpoints").iterdir())
    assert saved == ["2", "4", "6", "8"]
    assert "resumed from step 4" in (out / "second.err").read_text()
    assert_bitwise_equal(uninterrupted, out / "run")
