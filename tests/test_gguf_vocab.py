"""Tokenizer metadata for GGUF (slm_jax/hf/gguf_vocab.py): llama.cpp's pre-tokenizer names read
from tokenizer.json, placeholder rows up to the model's vocab, refusals naming the fix."""
import json

import pytest

from slm_jax.hf import gguf_vocab
from slm_jax.hf.mapping import ConversionError

BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}


@pytest.mark.parametrize("pre,name", [
    (BYTE_LEVEL, "gpt-2"),
    ({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                            BYTE_LEVEL]}, "smollm"),
    ({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": gguf_vocab._LLAMA3_REGEX}, "behavior": "Isolated"},
        dict(BYTE_LEVEL, use_regex=False)]}, "llama-bpe"),
    ({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": gguf_vocab._QWEN2_REGEX}, "behavior": "Isolated"},
        dict(BYTE_LEVEL, use_regex=False)]}, "qwen2"),
])
def test_llama_cpps_pre_tokenizer_name_is_read_from_tokenizer_json(pre, name):
    assert gguf_vocab._pre_tokenizer_name({"pre_tokenizer": pre}, "t.json") == name


def test_an_unknown_pre_tokenizer_names_the_flag():
    with pytest.raises(ConversionError, match="t.json: its pre-tokenizer .* --tokenizer_pre"):
        gguf_vocab._pre_tokenizer_name({"pre_tokenizer": {"type": "Whitespace"}}, "t.json")


def test_placeholders_fill_the_models_rows_and_a_larger_tokenizer_is_refused():
    table = gguf_vocab.TokenTable("llama", ["<unk>", "a"], [2, 1], [0.0, -1.0])
    table.pad_to(4, "dir")
    assert table.tokens == ["<unk>", "a", "[PAD2]", "[PAD3]"] and table.types[2:] == [5, 5]
    assert table.scores[2:] == [-1000.0, -1000.0]
    with pytest.raises(ConversionError, match="has 4 tokens but the model's vocab_size is 3"):
        table.pad_to(3, "dir")


def test_a_tokenizer_json_that_is_not_byte_level_bpe_is_refused(tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps({
        "model": {"type": "WordPiece", "vocab": {"a": 0}}, "decoder": {"type": "WordPiece"}}))
    with pytest.raises(ConversionError, match="not a byte-level BPE tokenizer"):
        gguf_vocab.byte_level_bpe_table(tmp_path, None)


def test_the_tokenizer_directory_is_the_flag_or_the_source(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "tokenizer.json").write_text("{}")
    assert gguf_vocab.tokenizer_directory(None, str(tmp_path / "src")) == str(tmp_path / "src")
    with pytest.raises(ConversionError, match="--tokenizer .* holds neither"):
        gguf_vocab.tokenizer_directory(str(tmp_path), str(tmp_path / "src"))
    with pytest.raises(ConversionError, match="no tokenizer for the GGUF file"):
        gguf_vocab.tokenizer_directory(None, None)
