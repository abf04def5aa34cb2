"""The stream layout (slm_jax/data/streams.py): global batches independent of hosts, state that moves between host counts."""

import json
import os
import random

import jax
import numpy as np
import pytest

from slm_jax.data import BATCH_KEYS, demo_corpus, iterator, pipeline, streams, tasks, tokenizer

STEPS = 40  # each stream reads its ~35 documents 1.5 times, over several packing blocks


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """4 TFRecord files of short documents (1-4 lines: rows hold one or several chunks)."""
    root = str(tmp_path_factory.mktemp("order"))
    corpus = demo_corpus.generate_corpus(root, seed=0, n_web_docs=12, n_clean_docs=1, n_eval_docs=1)
    vocab = tokenizer.train_sentencepiece([corpus.web_jsonl], os.path.join(root, "spm"), vocab_size=512)
    with open(corpus.web_jsonl, encoding="utf-8") as f:
        lines = [line for row in f for line in json.loads(row)["text"].split("\n") if line.strip()]
    rng, docs = random.Random(0), []
    while lines:
        n = rng.randint(1, 4)
        docs.append("\n".join(lines[:n]))
        lines = lines[n:]
    for i in range(4):
        tasks.write_text_tfrecord(docs[i::4], os.path.join(root, f"docs-{i}-of-4.tfrecord"))
    return os.path.join(root, "docs-*-of-4.tfrecord"), vocab


def _config(data, **overrides):
    pattern, vocab = data
    fields = dict(file_pattern=pattern, vocab_path=vocab, seq_len=32, global_batch_size=8,
                  num_streams=2, shuffle_buffer=16, seed=0)
    fields.update(overrides)
    return pipeline.DataConfig(**fields)


def _take(batches, n):
    return [{k: np.asarray(v) for k, v in next(batches).items()} for _ in range(n)]


def _assert_same(batches, others):
    assert len(batches) == len(others)
    for step, (a, b) in enumerate(zip(batches, others)):
        for key in BATCH_KEYS:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"batch {step}, {key}")


@pytest.fixture(scope="module")
def mesh():
    return jax.make_mesh((8,), ("data",))


SAVES = (7, 29)  # one mid-block, one in the second pass over the documents


@pytest.fixture(scope="module")
def saved_run(data, mesh, tmp_path_factory):
    """An uninterrupted run of STEPS batches and the data states it reported at SAVES
    (each through JSON, as the checkpoint stores it)."""
    run = iterator.make_train_iterator(_config(data), mesh)
    batches, states = [], {}
    for step in range(STEPS):
        if step in SAVES:
            states[step] = json.loads(json.dumps(run.state()))
        batches += _take(run, 1)
    return batches, states


# --------------------------------------------------------------------------
# Resuming.


# --------------------------------------------------------------------------
# Independence from the number of hosts.


def _joined(parts):
    return [{k: np.concatenate([p[i][k] for p in parts]) for k in BATCH_KEYS}
            for i in range(len(parts[0]))]


def test_global_batch_does_not_depend_on_the_hosts(data):
    """K=4: one host == two hosts side by side, and two hosts' state resumes on four."""
    config = _config(data, num_streams=4)
    one = _take(pipeline.host_streams(config), 19)
    two_hosts = [pipeline.host_streams(config, h, 2) for h in range(2)]
    _assert_same(_joined([_take(host, 13) for host in two_hosts]), one[:13])
    merged = {**two_hosts[0].state(), "positions": {
        k: v for host in two_hosts for k, v in host.state()["positions"].items()}}
    four_hosts = [pipeline.host_streams(config, h, 4) for h in range(4)]
    for host in four_hosts:
        host.restore_state(merged, "the two-host state")
    _assert_same(_joined([_take(host, 6) for host in four_hosts]), one[13:])


def test_streams_fill_their_own_rows(data, saved_run):
    # Rows [k*B/K, (k+1)*B/K) of every batch are stream k's.
    uninterrupted, _ = saved_run
    first_stream = _take(pipeline.stream_set(_config(data), [0]), 3)
    for a, b in zip(first_stream, uninterrupted):
        for key in BATCH_KEYS:
            np.testing.assert_array_equal(a[key], b[key][:4])


# --------------------------------------------------------------------------
# Errors name the binding to fix.


def test_num_streams_must_divide_the_batch(data):
    with pytest.raises(ValueError, match=r"num_streams=3 must divide DataConfig.global_batch_size=8"):
        _config(data, num_streams=3)


def test_num_streams_must_be_a_multiple_of_the_hosts(data):
    hosts = r"DataConfig.num_streams=2 is not a multiple of the number of hosts \(4\).*\[4, 8\]"
    with pytest.raises(ValueError, match=hosts):
        pipeline.host_streams(_config(data), 0, 4)
    with pytest.raises(ValueError, match="DataConfig.num_streams"):
        streams.layout(2, 8, 3)
