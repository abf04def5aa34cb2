"""The trainer's iterator (slm_jax/data/iterator.py): the data order is a pure function of (seed, step, files) and resumes exactly from its saved state."""

import glob
import json
import os
import random
import re
import shutil

import jax
import numpy as np
import pytest

from slm_jax.corpora import embedded
from slm_jax.data import BATCH_KEYS, iterator, pipeline, tasks, tokenizer

STEPS = 40  # each stream reads its ~35 documents 1.5 times, over several packing blocks


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """4 TFRecord files of short documents (1-4 lines: rows hold one or several chunks)."""
    root = str(tmp_path_factory.mktemp("order"))
    corpus = embedded.generate_corpus(root, seed=0, n_web_docs=12, n_clean_docs=1, n_eval_docs=1)
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


@pytest.mark.parametrize("stop", SAVES)
def test_saved_and_restored_run_continues_exactly(data, mesh, saved_run, stop):
    uninterrupted, states = saved_run
    assert sorted(states[stop]["positions"]) == ["0", "1"] and states[stop]["step"] == stop
    resumed = iterator.make_train_iterator(_config(data), mesh, start_step=stop,
                                           saved_state=states[stop])
    assert resumed.step == stop
    _assert_same(_take(resumed, STEPS - stop), uninterrupted[stop:])


def test_replay_without_saved_state_gives_the_same_batches(data, mesh, saved_run, tmp_path):
    uninterrupted, _ = saved_run
    replayed = iterator.make_train_iterator(_config(data), mesh, start_step=11)
    assert replayed.step == 11
    _assert_same(_take(replayed, STEPS - 11), uninterrupted[11:])


def test_restore_checks_the_step_and_the_data_settings(data, mesh, saved_run):
    _, states = saved_run
    with pytest.raises(ValueError, match="holds the data order of step 7, not of step 8"):
        iterator.make_train_iterator(_config(data), mesh, start_step=8, saved_state=states[7])
    with pytest.raises(ValueError, match="made with other data settings .*seed: 0 -> 1"):
        iterator.make_train_iterator(_config(data, seed=1), mesh, start_step=7,
                                     saved_state=states[7])
    torn = json.loads(json.dumps(states[7]))
    torn["positions"]["1"]["rows"] += 1
    with pytest.raises(ValueError, match="does not belong to this run"):
        iterator.make_train_iterator(_config(data), mesh, start_step=7, saved_state=torn)


# --------------------------------------------------------------------------
# Independence from the number of hosts.


def test_different_seeds_give_different_orders(data, saved_run, mesh):
    uninterrupted, _ = saved_run
    other = _take(iterator.make_train_iterator(_config(data, seed=1), mesh), 4)
    assert any(not np.array_equal(a["inputs"], b["inputs"]) for a, b in zip(other, uninterrupted))


# --------------------------------------------------------------------------
# Errors name the binding to fix.


# --------------------------------------------------------------------------
# A damaged input file is named, with the fix, instead of tf.data's DataLossError.


def _damage(path, how):
    data = open(path, "rb").read()
    if how == "truncated":            # a copy cut short
        data = data[:len(data) // 2]
    elif how == "corrupted":          # one bit flipped inside a record
        data = data[:len(data) // 2] + bytes([data[len(data) // 2] ^ 1]) + data[len(data) // 2 + 1:]
    else:                             # not a TFRecord at all
        data = b"<html>403 Forbidden</html>\n"
    open(path, "wb").write(data)


@pytest.fixture
def damaged_copy(data, tmp_path):
    """Copies of the 4 files with one of them (docs-2) damaged as asked."""
    def make(how):
        for path in glob.glob(data[0]):
            shutil.copy(path, tmp_path)
        _damage(str(tmp_path / "docs-2-of-4.tfrecord"), how)
        return _config((str(tmp_path / "docs-*-of-4.tfrecord"), data[1]))
    return make


@pytest.mark.parametrize("how, what, start_step", [
    ("truncated", r"truncated record at byte \d+", 0),
    ("truncated", r"truncated record at byte \d+", 3),  # replaying to a step reads too
    ("corrupted", r"corrupted record at byte \d+", 0),
    ("not a tfrecord", r"corrupted record at byte 0, not a TFRecord file", 0),
])
def test_a_damaged_file_is_named_with_the_fix(damaged_copy, mesh, how, what, start_step):
    config = damaged_copy(how)
    with pytest.raises(ValueError) as error:
        next(iterator.make_train_iterator(config, mesh, start_step=start_step))
    message = str(error.value)
    assert "\n" not in message
    assert re.fullmatch(rf"data file '.*/docs-2-of-4.tfrecord' is damaged \({what}\); copy or "
                        r"re-create it, or leave it out of DataConfig.file_pattern='.*'\.",
                        message), message


def test_find_damaged_tfrecord(data, damaged_copy, tmp_path):
    assert iterator.find_damaged_tfrecord(sorted(glob.glob(data[0]))) is None
    damaged_copy("truncated")
    files = sorted(glob.glob(str(tmp_path / "docs-*-of-4.tfrecord")))
    assert iterator.find_damaged_tfrecord(files) == files[2]
    # Files no longer than the bad record's offset cannot hold it: not even read.
    assert iterator.find_damaged_tfrecord(files, offset=10**9) is None

