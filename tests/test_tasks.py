"""Text corpora as TFRecords and seqio tasks (slm_jax/data/tasks.py)."""

import json

import pytest

from slm_jax.corpora import embedded
from slm_jax.data import tasks

BOS, EOS = 1, 2


# --------------------------------------------------------------------------
# Fixtures and helpers.


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return embedded.generate_corpus(str(root), seed=0, n_web_docs=40, n_clean_docs=30, n_eval_docs=10)


# --------------------------------------------------------------------------
# Tokenizer.


# --------------------------------------------------------------------------
# Task and packing.


def test_jsonl_to_tfrecord_skips_empty_documents(tmp_path):
    src = tmp_path / "docs.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in [{"text": "a"}, {"text": ""}, {"other": 1}, {"text": "b"}]))
    assert tasks.jsonl_to_tfrecord(str(src), str(tmp_path / "docs.tfrecord")) == 2


# --------------------------------------------------------------------------
# Sharding.


# --------------------------------------------------------------------------
# Configuration errors name the gin binding to fix.
