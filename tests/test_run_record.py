"""run_record.json (slm_jax/trainer/run_record.py): git SHA, packages, devices and configs of every (re)start."""

import json

import jax

from slm_jax.jobs.train import train
from tests.test_train import TINY, web  # noqa: F401  (shared fixtures and helpers)


def test_run_record(tmp_path, web):
    train(run_dir=str(tmp_path / "run"), data=web, model=TINY, num_steps=1, progress=False)
    record = json.loads((tmp_path / "run" / "run_record.json").read_text())
    assert record["packages"]["jax"] == jax.__version__
    assert record["devices"]["device_count"] == 8 and record["devices"]["mesh"]["data"] == 8
    assert record["selection"]["mode"] == "clm" and len(record["history"]) == 1
    assert record["model"]["d_model"] == 32 and record["data"]["seq_len"] == 64
    assert (tmp_path / "run" / "config.gin").exists()  # gin bindings; empty when called from Python


def test_repo_root_is_the_checkout_and_the_sha_is_its_head():
    from slm_jax.trainer import run_record
    import os
    import subprocess
    assert os.path.isdir(os.path.join(run_record.REPO_ROOT, "slm_jax", "trainer"))
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=run_record.REPO_ROOT,
                          capture_output=True, text=True).stdout.strip()
    assert run_record.git_sha().split("-")[0] == head
