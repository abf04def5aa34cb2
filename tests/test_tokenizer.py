"""SentencePiece training, the Llama-compatible vocabulary and which loader a path gets
(slm_jax/data/tokenizer.py)."""

import hashlib
import os
import shutil

import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from slm_jax.corpora import embedded
from slm_jax.data import hf_tokenizer, tasks, tokenizer
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
    for split in embedded.SPLITS:
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
# Loading: a SentencePiece model or a Hugging Face tokenizer, by what the path holds.


def test_path_picks_the_loader(corpus, model_path, tmp_path):
    from tests.test_hf_tokenizer import write_hf_tokenizer
    hf_dir = write_hf_tokenizer(tmp_path / "hf", _texts(corpus.jsonl["clean"])[:10])
    unnamed = str(tmp_path / "tokenizer")  # JSON without a .json name
    shutil.copy(os.path.join(hf_dir, "tokenizer.json"), unnamed)
    shutil.copy(os.path.join(hf_dir, "tokenizer_config.json"), tmp_path)
    for path in (hf_dir, os.path.join(hf_dir, "tokenizer.json"), unnamed):
        assert isinstance(tokenizer.load_vocabulary(path), hf_tokenizer.HfTokenizerVocabulary)
    sp = tokenizer.load_vocabulary(model_path)
    assert isinstance(sp, tokenizer.LlamaCompatibleVocabulary) and sp.path == model_path
    # Saved data orders recorded this hash before HF tokenizers existed: it must not change.
    assert sp.fingerprint == hashlib.sha1(sp.sp_model).hexdigest()[:16]


def test_token_table_compares_tokens_not_bytes(corpus, model_path, tmp_path):
    copy = str(tmp_path / "copy.model")
    shutil.copy(model_path, copy)
    sp, again = tokenizer.load_vocabulary(model_path), tokenizer.load_vocabulary(copy)
    assert tokenizer.token_table(sp) == tokenizer.token_table(again)
    pieces, bos, eos = tokenizer.token_table(sp)
    assert (len(pieces), bos, eos) == (512, BOS, EOS) and pieces[:3] == ("<unk>", "<s>", "</s>")


def test_missing_path_names_both_kinds(tmp_path):
    with pytest.raises(ValueError, match=r"nope' does not exist; set DataConfig.vocab_path to a "
                                         r"SentencePiece .model file or a Hugging Face "
                                         r"tokenizer.json \(or the directory holding it\)"):
        tokenizer.load_vocabulary(str(tmp_path / "nope"))


# --------------------------------------------------------------------------
# Task and packing.


# --------------------------------------------------------------------------
# Sharding.


# --------------------------------------------------------------------------
# Configuration errors name the gin binding to fix.
