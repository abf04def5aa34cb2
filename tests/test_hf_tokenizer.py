"""Hugging Face tokenizers as seqio vocabularies (slm_jax/data/hf_tokenizer.py).

Tiny byte-level BPE tokenizers are trained here with `tokenizers` itself, shaped like
the real ones: SmolLM2 (specials first, so EOS <|endoftext|> is id 0), Qwen (specials
last, so id 0 is "!", a token inside documents) and Llama-3 (the post-processor adds
<|begin_of_text|>). One test reads the real SmolLM2-135M-Instruct tokenizer.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from slm_jax.corpora import embedded
from slm_jax.data import tokenizer

SHAPES = ("smollm2", "qwen", "llama3")
SMOLLM2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
ODD = "Tabs\tand  double spaces, ünïcödé €, 漢字 🙂, 12345 * 6 = 74070! \\frac{a}{b} <|endoftext|>"


def _texts(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def write_hf_tokenizer(directory, texts, shape: str = "smollm2", vocab_size: int = 400) -> str:
    """A byte-level BPE tokenizer.json + tokenizer_config.json in `directory`; returns it.

    smollm2: <|endoftext|> (EOS) = 0, <|im_start|> = 1, <|im_end|> = 2, no BOS added.
    qwen: id 0 is "!", <|endoftext|> (EOS) is the last id, no BOS added.
    llama3: like qwen plus <|begin_of_text|>, which the post-processor prepends.
    """
    os.makedirs(directory, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    first = SMOLLM2_SPECIALS if shape == "smollm2" else []
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=first, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    config = {"eos_token": {"content": "<|endoftext|>", "special": True}}
    if shape != "smollm2":
        bpe.add_special_tokens(["<|endoftext|>"])
        config = {"eos_token": "<|endoftext|>"}
    if shape == "llama3":
        bpe.add_special_tokens(["<|begin_of_text|>"])
        bos = bpe.token_to_id("<|begin_of_text|>")
        bpe.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)])
        config["bos_token"] = "<|begin_of_text|>"
    bpe.save(os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)
    return str(directory)


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    corpus = embedded.generate_corpus(str(tmp_path_factory.mktemp("texts")), seed=1,
                                      n_web_docs=12, n_clean_docs=6, n_eval_docs=2)
    return _texts(corpus.jsonl["web"]) + _texts(corpus.jsonl["clean"])


@pytest.fixture(scope="module")
def hf_dirs(texts, tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {shape: write_hf_tokenizer(root / shape, texts, shape) for shape in SHAPES}


def _raw(directory) -> Tokenizer:
    return Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))


# --------------------------------------------------------------------------
# Special tokens.


def test_special_ids_follow_each_tokenizer_shape(hf_dirs):
    smollm2, qwen, llama3 = (tokenizer.load_vocabulary(hf_dirs[s]) for s in SHAPES)
    assert (smollm2.eos_id, smollm2.bos_id) == (0, None)
    assert _raw(hf_dirs["qwen"]).id_to_token(0) == "!"
    assert (qwen.eos_id, qwen.bos_id) == (qwen.vocab_size - 1, None)
    raw_llama3 = _raw(hf_dirs["llama3"])
    assert llama3.bos_id == raw_llama3.token_to_id("<|begin_of_text|>") == llama3.vocab_size - 1
    assert llama3.eos_id == raw_llama3.token_to_id("<|endoftext|>")
    assert smollm2.vocab_size == _raw(hf_dirs["smollm2"]).get_vocab_size()
    # A tokenizer.json file works as well as its directory.
    assert tokenizer.load_vocabulary(os.path.join(hf_dirs["qwen"], "tokenizer.json")) == qwen
    assert qwen != smollm2 and qwen.fingerprint != smollm2.fingerprint


@pytest.mark.parametrize("files, want", [
    ({"tokenizer_config.json": {"add_bos_token": False, "eos_token": "<|endoftext|>"}},
     (None, "eos")),
    ({"special_tokens_map.json": {"eos_token": "<|endoftext|>"}}, ("bos", "eos")),
    ({"config.json": {"eos_token_id": 7}}, ("bos", 7)),
    ({"generation_config.json": {"eos_token_id": [9, 7]}}, ("bos", 9)),
])
def test_special_ids_fall_back_through_the_config_files(hf_dirs, tmp_path, files, want):
    directory = tmp_path / "tok"
    directory.mkdir()
    raw = _raw(hf_dirs["llama3"])
    raw.save(str(directory / "tokenizer.json"))
    for name, content in files.items():
        (directory / name).write_text(json.dumps(content))
    vocab = tokenizer.load_vocabulary(str(directory))
    ids = {"bos": raw.token_to_id("<|begin_of_text|>"), "eos": raw.token_to_id("<|endoftext|>")}
    assert (vocab.bos_id, vocab.eos_id) == tuple(ids.get(w, w) for w in want)


# --------------------------------------------------------------------------
# Encoding and decoding.


@pytest.mark.parametrize("shape", SHAPES)
def test_encoding_is_the_tokenizers_own_without_special_tokens(hf_dirs, texts, shape):
    vocab, raw = tokenizer.load_vocabulary(hf_dirs[shape]), _raw(hf_dirs[shape])
    for text in texts[:5] + ["x! y!! 0!"]:
        want = raw.encode(text, add_special_tokens=False).ids
        assert vocab.encode(text) == want == vocab.tokenizer.encode(text)
        assert vocab.encode_tf(tf.constant(text)).numpy().tolist() == want
        assert vocab.decode(want) == text == vocab.tokenizer.decode(want)
    batch = vocab.encode_tf(tf.constant(texts[:3]))
    assert batch.to_list() == [raw.encode(t, add_special_tokens=False).ids for t in texts[:3]]
    assert vocab.decode_tf(tf.constant([vocab.encode("ab c")])).numpy().tolist() == [b"ab c"]


def test_special_token_text_is_read_as_text(hf_dirs):
    # A document quoting "<|endoftext|>" must not end early: EOS marks document ends.
    vocab = tokenizer.load_vocabulary(hf_dirs["smollm2"])
    ids = vocab.encode(ODD)
    assert vocab.eos_id not in ids and vocab.decode(ids) == ODD


def test_sentencepiece_face_for_math_eval_and_the_analysis_page(hf_dirs):
    vocab = tokenizer.load_vocabulary(hf_dirs["llama3"])
    sp, raw = vocab.tokenizer, _raw(hf_dirs["llama3"])
    assert (sp.bos_id(), sp.eos_id(), sp.unk_id()) == (vocab.bos_id, vocab.eos_id, -1)
    assert sp.GetPieceSize() == vocab.vocab_size
    assert sp.IdToPiece(0) == "!" and sp.PieceToId("!") == 0
    assert sp.IsControl(vocab.eos_id) and not sp.IsControl(0) and not sp.IsByte(0)
    assert sp.encode(["a b", "c"]) == [raw.encode(t, add_special_tokens=False).ids
                                       for t in ("a b", "c")]


# --------------------------------------------------------------------------
# Errors name the path and the gin binding.


def test_bad_tokenizers_are_one_line_errors(hf_dirs, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text('{"model": {"type": "BPE", ')
    no_eos = tmp_path / "no_eos"
    no_eos.mkdir()
    _raw(hf_dirs["qwen"]).save(str(no_eos / "tokenizer.json"))
    bad_config = tmp_path / "bad_config"
    bad_config.mkdir()
    _raw(hf_dirs["qwen"]).save(str(bad_config / "tokenizer.json"))
    (bad_config / "tokenizer_config.json").write_text("{eos")
    (tmp_path / "empty").mkdir()
    cases = {
        str(broken): r"broken/tokenizer.json' is not a readable Hugging Face tokenizer.json",
        str(no_eos): r"no_eos/tokenizer.json' defines no EOS token",
        str(bad_config): r"bad_config/tokenizer_config.json' is not valid JSON",
        str(tmp_path / "empty"): r"empty' is a directory without a tokenizer.json",
    }
    for path, message in cases.items():
        with pytest.raises(ValueError, match=message + r".*set DataConfig.vocab_path to a ") as e:
            tokenizer.load_vocabulary(path)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"set ReferenceConfig.vocab_path to a SentencePiece"):
        tokenizer.load_vocabulary(str(broken), binding="ReferenceConfig.vocab_path")


# --------------------------------------------------------------------------
# The real SmolLM2-135M-Instruct tokenizer.


def test_smollm2_matches_transformers(smollm2_hf_dir):
    transformers = pytest.importorskip("transformers")
    reference = transformers.AutoTokenizer.from_pretrained(smollm2_hf_dir)
    vocab = tokenizer.load_vocabulary(smollm2_hf_dir)
    assert (vocab.bos_id, vocab.eos_id, vocab.unk_id, vocab.vocab_size) == (None, 2, 0, 49152)
    strings = ["Hello world", "  leading spaces and trailing ", "ünïcödé, 漢字 and 🙂",
               "x^2 + 3x - 4 = 0, so x = 1 or x = -4.", "1234567890 * 0.5 = 617283945",
               "\\int_0^1 x\\,dx = \\frac{1}{2}", "line one\nline two\n\n\ttabbed"]
    for text in strings:
        ids = reference.encode(text, add_special_tokens=False)
        assert vocab.encode(text) == ids, text
        assert vocab.encode_tf(tf.constant(text)).numpy().tolist() == ids
        assert vocab.decode(ids) == reference.decode(ids) == text
    assert vocab.tokenizer.decode([1, *vocab.encode("hi"), 2]) == "hi"
    assert np.array_equal(vocab.encode_tf(tf.constant(strings)).flat_values.numpy(),
                          sum((reference.encode(t, add_special_tokens=False) for t in strings), []))
