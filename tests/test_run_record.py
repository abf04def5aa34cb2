"""run_record.json (slm_jax/jobs/run_record.py): git SHA, packages, devices and configs of every (re)start."""

import json

import jax
import pytest

from slm_jax import model as model_lib
from slm_jax.data import pipeline
from slm_jax.jobs.train import train
from tests.tiny_corpus import tiny_corpus

TINY = model_lib.ModelConfig(vocab_size=512, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                             mlp_dim=64, max_seq_len=64, dtype="float32")


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust")
    paths, vocab = tiny_corpus(root, seed=3)
    return pipeline.DataConfig(file_pattern=paths.web_tfrecord, vocab_path=vocab, seq_len=64,
                               global_batch_size=8)


def test_run_record(tmp_path, web):
    train(run_dir=str(tmp_path / "run"), data=web, model=TINY, num_steps=1, progress=False)
    record = json.loads((tmp_path / "run" / "run_record.json").read_text())
    assert record["packages"]["jax"] == jax.__version__
    assert record["devices"]["device_count"] == 8 and record["devices"]["mesh"]["data"] == 8
    assert record["selection"]["mode"] == "clm" and len(record["history"]) == 1
    assert record["model"]["d_model"] == 32 and record["data"]["seq_len"] == 64
    assert (tmp_path / "run" / "config.gin").exists()  # gin bindings; empty when called from Python
