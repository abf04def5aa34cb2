"""The embedded generated corpus (slm_jax/corpora/embedded.py): determinism, noise placement,
correct arithmetic, held-out eval."""

import json
import operator
import os
import re

import pytest

from slm_jax.corpora import embedded

SMALL = dict(n_web_docs=60, n_clean_docs=30, n_eval_docs=15)
EQUATION = re.compile(r"(?<![\w.])(\d+) ([-+*/]) (\d+) = (\d+)(?!\d)")
ANSWER_LINE = re.compile(r"^#### (\d+)$")
NOISE = re.compile(
    r"<[a-z/]|&nbsp;|&amp;|https?://|Posted by|Cookie (?:Policy|notice)|uses cookies| \| |\[edit\]|\(id:|#[0-9a-f]{6}\b|commit [0-9a-f]{40}"
)
OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


def _texts(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def _all_bytes(root):
    return {name: open(os.path.join(root, name), "rb").read() for name in sorted(os.listdir(root))}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return embedded.generate_corpus(str(tmp_path_factory.mktemp("corpus")), seed=0, **SMALL)


def test_same_seed_same_files_other_seed_different(corpus, tmp_path):
    again = embedded.generate_corpus(str(tmp_path / "again"), seed=0, **SMALL)
    other = embedded.generate_corpus(str(tmp_path / "other"), seed=1, **SMALL)
    first = _all_bytes(corpus.root)
    assert set(first) == {
        "web.jsonl", "web.tfrecord", "clean.jsonl", "clean.tfrecord",
        "eval.jsonl", "eval.tfrecord", "eval_problems.jsonl", "exemplars.jsonl",
    }
    assert first == _all_bytes(again.root)
    other_bytes = _all_bytes(other.root)
    assert all(first[name] != other_bytes[name] for name in first)


def test_tfrecords_hold_the_jsonl_documents(corpus):
    import tensorflow as tf

    spec = {"text": tf.io.FixedLenFeature([], tf.string)}
    for split in embedded.SPLITS:
        records = tf.data.TFRecordDataset(corpus.tfrecord[split])
        texts = [tf.io.parse_single_example(r, spec)["text"].numpy().decode() for r in records]
        assert texts == _texts(corpus.jsonl[split])
    assert len(_texts(corpus.jsonl["web"])) == SMALL["n_web_docs"]


def test_noise_only_in_web_split(corpus):
    for text in _texts(corpus.jsonl["web"]):
        assert NOISE.search(text), text
    for split in ("clean", "eval"):
        for text in _texts(corpus.jsonl[split]):
            assert not NOISE.search(text), text


def test_web_noise_share_is_thirty_to_fifty_percent():
    docs = list(embedded.iter_documents("web", seed=0, n=200))
    share = sum(d.noise_chars for d in docs) / sum(len(d.text) for d in docs)
    assert 0.3 <= share <= 0.55
    assert all(d.noise_chars > 0 for d in docs)


@pytest.mark.parametrize("split", embedded.SPLITS)
def test_every_step_is_correct_and_ends_in_the_answer(corpus, split):
    for text in _texts(corpus.jsonl[split]):
        answers, last_result = 0, None
        for line in text.split("\n"):
            for a, op, b, c in EQUATION.findall(line):
                assert OPS[op](int(a), int(b)) == int(c), line
                last_result = int(c)
            match = ANSWER_LINE.match(line)
            if match:
                assert last_result is not None and int(match.group(1)) == last_result, text
                answers, last_result = answers + 1, None
        assert 1 <= answers <= 4, text


def test_eval_problems_are_held_out(corpus):
    with open(corpus.eval_problems, encoding="utf-8") as f:
        problems = [json.loads(line) for line in f]
    assert problems and all(set(p) == {"question", "answer"} for p in problems)
    assert all(p["answer"].isdigit() for p in problems)
    eval_text = "\n".join(_texts(corpus.jsonl["eval"]))
    training_text = "\n".join(_texts(corpus.jsonl["web"]) + _texts(corpus.jsonl["clean"]))
    for p in problems:
        assert f"Question: {p['question']}" in eval_text
        assert p["question"] not in training_text


def test_held_out_keys_are_redrawn():
    held_out = {p.key for d in embedded.iter_documents("eval", 0, 15) for p in d.problems}
    for split in ("web", "clean"):
        docs = embedded.iter_documents(split, 0, 60, excluded_keys=held_out)
        assert not held_out & {p.key for d in docs for p in d.problems}
