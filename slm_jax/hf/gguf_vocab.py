"""The tokenizer as GGUF metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`), read by
the `gguf` package's vocab classes from a directory of Hugging Face tokenizer files.

Two kinds convert: Hugging Face byte-level BPE (`tokenizer.json`; llama.cpp's "gpt2" model with
merges and a pre-tokenizer name) and SentencePiece (`tokenizer.model`; llama.cpp's "llama" model
with scores). The pre-tokenizer name tells llama.cpp which split regex the merges were learned
with; llama.cpp's own converter finds it by hashing a tokenization, here it is read from
`tokenizer.json`'s pre-tokenizer (the regexes below are the ones llama.cpp names).
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from slm_jax.hf.mapping import ConversionError

_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLIT_NAMES = {_LLAMA3_REGEX: "llama-bpe", _QWEN2_REGEX: "qwen2"}


def _pre_tokenizer_name(tokenizer_json: dict, path: str) -> str:
    """llama.cpp's name for the pre-tokenizer of a byte-level BPE tokenizer.json."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    splits = [step.get("pattern", {}).get("Regex") for step in steps if step.get("type") == "Split"]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return "smollm"            # GPT-2's split with every digit on its own (SmolLM/SmolLM2)
    if len(splits) == 1 and splits[0] in _SPLIT_NAMES:
        return _SPLIT_NAMES[splits[0]]
    raise ConversionError(
        f"{path}: its pre-tokenizer ({json.dumps(pre)[:160]}) is not one this converter names "
        "for llama.cpp (GPT-2, SmolLM, Llama-3, Qwen2); pass --tokenizer_pre with llama.cpp's "
        "name for it (its convert_hf_to_gguf.py lists them)")


def tokenizer_directory(tokenizer: str | None, fallback: str | None) -> str:
    """The directory of tokenizer files to write: `tokenizer` (a directory, a tokenizer.json
    or a .model, copied as Hugging Face files by the caller) or the model's source files."""
    def has_files(directory):
        return directory and os.path.isdir(directory) and any(
            os.path.exists(os.path.join(directory, n)) for n in ("tokenizer.json", "tokenizer.model"))
    if tokenizer:
        if not has_files(tokenizer):
            raise ConversionError(f"--tokenizer {tokenizer} holds neither tokenizer.json nor "
                                  "tokenizer.model; pass one of those files or their directory")
        return tokenizer
    if has_files(fallback):
        return fallback
    raise ConversionError(
        "no tokenizer for the GGUF file: pass --tokenizer (a tokenizer.json, a SentencePiece "
        ".model or a directory holding them); a GGUF file without one cannot run in llama.cpp")


@dataclasses.dataclass
class TokenTable:
    """What `tokenizer.ggml.*` lists, in id order."""
    model: str                       # llama.cpp's tokenizer model: "gpt2" or "llama"
    tokens: list[str]
    types: list[int]
    scores: list[float] | None       # SentencePiece only
    pre: str | None = None           # byte-level BPE only
    processor: object = None         # the SentencePieceProcessor, for its special ids

    def pad_to(self, vocab_size: int, directory: str):
        """Rows the model has beyond the tokenizer's become unused placeholder tokens."""
        import gguf
        if len(self.tokens) > vocab_size:
            raise ConversionError(f"the tokenizer in {directory} has {len(self.tokens)} tokens "
                                  f"but the model's vocab_size is {vocab_size}; pass the "
                                  "model's own --tokenizer")
        for i in range(len(self.tokens), vocab_size):
            self.tokens.append(f"[PAD{i}]")
            self.types.append(gguf.TokenType.UNUSED)
            if self.scores is not None:
                self.scores.append(-1000.0)


def byte_level_bpe_table(path: Path, pre: str | None) -> TokenTable:
    import gguf
    from gguf.vocab import BpeVocab
    with open(path / "tokenizer.json", encoding="utf-8") as f:
        tokenizer_json = json.load(f)
    try:
        vocab = BpeVocab(path)
    except FileNotFoundError as e:
        raise ConversionError(
            f"{path / 'tokenizer.json'} is not a byte-level BPE tokenizer ({e}); GGUF export "
            "converts byte-level BPE tokenizer.json files and SentencePiece .model files")
    added = {t["content"]: t.get("special", True) for t in tokenizer_json.get("added_tokens", [])}
    tokens, types = [], []
    for text, _, _ in vocab.all_tokens():
        text = text.decode("utf-8") if isinstance(text, bytes) else text
        tokens.append(text)
        types.append(gguf.TokenType.NORMAL if text not in added else
                     gguf.TokenType.CONTROL if added[text] else gguf.TokenType.USER_DEFINED)
    return TokenTable("gpt2", tokens, types, None,
                      pre or _pre_tokenizer_name(tokenizer_json, str(path / "tokenizer.json")))


def sentencepiece_table(path: Path) -> TokenTable:
    from gguf.vocab import SentencePieceVocab
    vocab = SentencePieceVocab(path)
    rows = list(vocab.all_tokens())
    return TokenTable("llama", [text.decode("utf-8") for text, _, _ in rows],
                      [kind for _, _, kind in rows], [score for _, score, _ in rows],
                      processor=vocab.sentencepiece_tokenizer)


def add_tokenizer(writer, directory: str, vocab_size: int, *, pre: str | None = None,
                  chat_template: str | None = None) -> str:
    """Writes the tokenizer metadata; returns llama.cpp's tokenizer model name."""
    from gguf.vocab import SpecialVocab

    path = Path(directory)
    if (path / "tokenizer.json").exists():
        table = byte_level_bpe_table(path, pre)
    elif (path / "tokenizer.model").exists():
        table = sentencepiece_table(path)
    else:
        raise ConversionError(f"{directory} holds neither tokenizer.json nor tokenizer.model")
    table.pad_to(vocab_size, directory)
    writer.add_tokenizer_model(table.model)
    if table.pre:
        writer.add_tokenizer_pre(table.pre)
    writer.add_token_list(table.tokens)
    if table.scores is not None:
        writer.add_token_scores(table.scores)
    writer.add_token_types(table.types)
    special = SpecialVocab(path, load_merges=table.model == "gpt2", n_vocab=vocab_size)
    if table.processor is not None:   # ids and BOS as the project encodes with the .model
        writer.add_add_space_prefix(_sentencepiece_adds_space(path / "tokenizer.model"))
        sp = table.processor
        for role, token_id in (("bos", sp.bos_id()), ("eos", sp.eos_id()),
                               ("unk", sp.unk_id()), ("pad", sp.pad_id())):
            if token_id >= 0:
                special.special_token_ids[role] = token_id
        special.add_special_token.update(bos=sp.bos_id() >= 0, eos=False)
    if chat_template is not None:
        special.chat_template = chat_template or None   # "" drops the tokenizer's own
    special.add_to_gguf(writer, quiet=True)
    return table.model


def _sentencepiece_adds_space(model_path: Path) -> bool:
    from sentencepiece import sentencepiece_model_pb2 as model_pb2
    proto = model_pb2.ModelProto()
    proto.ParseFromString(model_path.read_bytes())
    return proto.normalizer_spec.add_dummy_prefix
