"""SentencePiece training and the Llama-compatible vocabulary (slm_jax/data/tokenizer.py)."""

import os

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from slm_jax.data import demo_corpus, tasks, tokenizer
from tests.test_pipeline import _texts, corpus, model_path, vocab  # noqa: F401  (shared fixtures and helpers)

BOS, EOS = 1, 2


# --------------------------------------------------------------------------
# Fixtures and helpers.


def _pieces(model_file):
    proto = sentencepiece_model_pb2.ModelProto.FromString(open(model_file, "rb").read())
    return [(p.piece, p.score, p.type) for p in proto.pieces]


# --------------------------------------------------------------------------
# Tokenizer.


def test_trained_model_has_llama_ids(vocab):
    assert (vocab.unk_id, vocab.bos_id, vocab.eos_id) == (0, 1, 2)
    assert vocab.vocab_size == 512
    pieces = [vocab.tokenizer.id_to_piece(i) for i in range(3)]
    assert pieces == ["<unk>", "<s>", "</s>"]


def test_tokenization_round_trips_without_unk(corpus, vocab):
    for split in demo_corpus.SPLITS:
        for text in _texts(corpus.jsonl[split]):
            ids = vocab.encode(text)
            assert 0 not in ids
            assert vocab.decode(ids) == text
    odd = "Tabs\tand  double spaces, ünïcödé €, 漢字 and emoji 🙂 \n  end "
    ids = vocab.encode(odd)
    assert 0 not in ids and vocab.decode(ids) == odd


def test_training_is_deterministic_and_reused(corpus, model_path, tmp_path):
    files = [corpus.jsonl["web"], corpus.jsonl["clean"]]
    retrained = tokenizer.train_sentencepiece(files, str(tmp_path / "again"), vocab_size=512)
    # Byte equality is too strict: the proto records its own model_prefix.
    assert _pieces(retrained) == _pieces(model_path)
    stamp = os.stat(retrained).st_mtime_ns
    assert tokenizer.train_sentencepiece(files, str(tmp_path / "again"), vocab_size=512) == retrained
    assert os.stat(retrained).st_mtime_ns == stamp, "identical request should reuse the model"
    tokenizer.train_sentencepiece(files, str(tmp_path / "again"), vocab_size=400)
    assert tokenizer.load_vocabulary(retrained).vocab_size == 400


def test_t5_style_model_loads(corpus, tmp_path):
    prefix = str(tmp_path / "t5")
    spm.SentencePieceTrainer.train(
        input=corpus.jsonl["clean"], model_prefix=prefix, vocab_size=300, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, num_threads=1, minloglevel=2,
    )
    vocab = tokenizer.load_vocabulary(prefix + ".model")
    assert (vocab.pad_id, vocab.eos_id, vocab.unk_id, vocab.bos_id) == (0, 1, 2, None)
    task = tasks.register_text_task("test_t5_vocab", corpus.tfrecord["eval"], prefix + ".model")
    example = next(task.get_dataset(shuffle=False, sequence_length=None).as_numpy_iterator())
    assert example["targets"][-1] == 1 and 1 not in example["targets"][:-1]


# --------------------------------------------------------------------------
# Task and packing.


# --------------------------------------------------------------------------
# Sharding.


# --------------------------------------------------------------------------
# Configuration errors name the gin binding to fix.
