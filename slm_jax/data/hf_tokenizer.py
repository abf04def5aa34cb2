"""A Hugging Face tokenizer (``tokenizer.json``) as a seqio vocabulary.

``DataConfig.vocab_path`` may name a ``tokenizer.json`` or a directory holding
one (a Hugging Face model directory). It is read with the ``tokenizers``
package alone; the config files beside it only say which tokens are special:

* EOS, the document separator, always appended (tasks.py): ``eos_token`` of
  tokenizer_config.json (a string or an AddedToken dict), else of
  special_tokens_map.json, else ``eos_token_id`` of config.json, then of
  generation_config.json. A tokenizer without one is refused.
* BOS is prepended per document only when the tokenizer itself adds one:
  ``add_bos_token`` of tokenizer_config.json when it is set, else whether the
  post-processor puts a token in front of a text. Llama-3 adds
  <|begin_of_text|>; SmolLM2 and Qwen add none, so their documents get none.
* Documents are encoded without the post-processor's tokens (the task adds
  BOS/EOS itself) and with special-token text read as plain text, as
  SentencePiece reads "</s>": a document containing "<|endoftext|>" cannot end
  itself early, and the resume cursor (streams.py) counts documents by EOS.

Byte-level BPE vocabularies use id 0 for a real token (<|endoftext|> in
SmolLM2, "!" in Qwen) where seqio expects padding; the pipeline offsets ids
while packing (see tokenizer.py), so nothing here works around it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Sequence
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402
import tokenizers  # noqa: E402

TOKENIZER_FILE = "tokenizer.json"
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def is_hf_tokenizer_path(path: str) -> bool:
    """A directory with a tokenizer.json, or a file that is JSON (SentencePiece models are protos)."""
    if tf.io.gfile.isdir(path):
        return tf.io.gfile.exists(os.path.join(path, TOKENIZER_FILE))
    if path.endswith(".json"):
        return True
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read(64).lstrip().startswith(b"{")


# --------------------------------------------------------------------------
# Which tokens are special, from the files beside tokenizer.json.


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    eos: Optional[int]
    bos: Optional[int]  # prepended per document; None when the tokenizer adds no BOS
    unk: Optional[int]


def _read_config(directory: str, name: str, fix: str) -> dict:
    path = os.path.join(directory, name)
    if not tf.io.gfile.exists(path):
        return {}
    try:
        with tf.io.gfile.GFile(path, "r") as f:
            config = json.load(f)
    except ValueError as e:
        raise ValueError(f"{path!r} is not valid JSON ({e}); {fix}.") from e
    return config if isinstance(config, dict) else {}


def _id_of_token(tokenizer: tokenizers.Tokenizer, value) -> Optional[int]:
    """The id of a config's token: a string or an AddedToken dict ({"content": ...})."""
    content = value.get("content") if isinstance(value, dict) else value
    return tokenizer.token_to_id(content) if isinstance(content, str) and content else None


def _config_id(config: dict, key: str) -> Optional[int]:
    value = config.get(key)
    if isinstance(value, list):  # generation configs may list several stop ids
        value = value[0] if value else None
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return value if ok else None


def _special_id(tokenizer: tokenizers.Tokenizer, configs: dict, name: str) -> Optional[int]:
    for file in ("tokenizer_config.json", "special_tokens_map.json"):
        token_id = _id_of_token(tokenizer, configs[file].get(f"{name}_token"))
        if token_id is not None:
            return token_id
    for file in ("config.json", "generation_config.json"):
        token_id = _config_id(configs[file], f"{name}_token_id")
        if token_id is not None:
            return token_id
    return None


def _post_processor_bos(tokenizer: tokenizers.Tokenizer) -> Optional[int]:
    """The id the post-processor puts in front of a text, if it puts one there."""
    plain = tokenizer.encode("a", add_special_tokens=False).ids
    full = tokenizer.encode("a", add_special_tokens=True).ids
    if len(full) > len(plain) and full[1:1 + len(plain)] == plain:
        return full[0]
    return None


def _document_bos(tokenizer: tokenizers.Tokenizer, configs: dict) -> Optional[int]:
    added = _post_processor_bos(tokenizer)
    flag = configs["tokenizer_config.json"].get("add_bos_token")
    if flag is None:
        return added
    if not flag:
        return None
    return added if added is not None else _special_id(tokenizer, configs, "bos")


def _unk_id(tokenizer: tokenizers.Tokenizer, configs: dict) -> Optional[int]:
    model_unk = getattr(tokenizer.model, "unk_token", None)
    return _id_of_token(tokenizer, model_unk) if model_unk else _special_id(tokenizer, configs, "unk")


def special_ids(tokenizer: tokenizers.Tokenizer, directory: str, fix: str) -> SpecialIds:
    names = ("tokenizer_config.json", "special_tokens_map.json", "config.json",
             "generation_config.json")
    configs = {name: _read_config(directory, name, fix) for name in names}
    return SpecialIds(eos=_special_id(tokenizer, configs, "eos"),
                      bos=_document_bos(tokenizer, configs), unk=_unk_id(tokenizer, configs))


# --------------------------------------------------------------------------
# The SentencePieceProcessor face the rest of the project calls.


def _minus_one_if_none(token_id: Optional[int]) -> int:
    return -1 if token_id is None else token_id


class HfProcessor:
    """The SentencePieceProcessor methods this project calls, over a ``tokenizers.Tokenizer``.

    ``vocabulary.tokenizer`` is a SentencePieceProcessor for a .model file; math
    eval, the analysis page and the demo call these methods on it, so a
    tokenizer.json serves them unchanged. Absent ids are -1, as in SentencePiece;
    ``bos_id()`` is the BOS documents were trained with (-1 when none).
    """

    def __init__(self, tokenizer: tokenizers.Tokenizer, special: SpecialIds, size: int):
        self._tokenizer, self._special, self._size = tokenizer, special, size
        self._control = {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}

    def encode(self, text):
        """Ids of a text (or a list of them), without special tokens."""
        if isinstance(text, str):
            return self._tokenizer.encode(text, add_special_tokens=False).ids
        return [e.ids for e in self._tokenizer.encode_batch_fast(list(text),
                                                                 add_special_tokens=False)]

    def decode(self, ids) -> str:
        """Text of ids; special tokens are left out, as SentencePiece leaves out control pieces."""
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def bos_id(self) -> int:
        return _minus_one_if_none(self._special.bos)

    def eos_id(self) -> int:
        return _minus_one_if_none(self._special.eos)

    def unk_id(self) -> int:
        return _minus_one_if_none(self._special.unk)

    def pad_id(self) -> int:
        return -1

    def GetPieceSize(self) -> int:  # noqa: N802  (SentencePiece's name)
        return self._size

    def IdToPiece(self, token_id: int) -> str:  # noqa: N802
        return self._tokenizer.id_to_token(int(token_id)) or ""

    def PieceToId(self, piece: str) -> int:  # noqa: N802
        return _minus_one_if_none(self._tokenizer.token_to_id(piece))

    def IsControl(self, token_id: int) -> bool:  # noqa: N802
        return int(token_id) in self._control

    def IsUnknown(self, token_id: int) -> bool:  # noqa: N802
        return int(token_id) == self._special.unk

    def IsByte(self, token_id: int) -> bool:  # noqa: N802
        # Byte-fallback pieces (Llama-2-style BPE) are spelled like SentencePiece's.
        return bool(_BYTE_PIECE.fullmatch(self.IdToPiece(token_id)))

    get_piece_size, id_to_piece, piece_to_id = GetPieceSize, IdToPiece, PieceToId


# --------------------------------------------------------------------------
# The seqio vocabulary.


def _as_text(value) -> str:
    if isinstance(value, np.ndarray):  # a string scalar arrives as a 0-d object array
        value = value.item()
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


class HfTokenizerVocabulary(seqio.Vocabulary):
    """seqio vocabulary over a Hugging Face ``tokenizers.Tokenizer``.

    ``bos_id`` is the BOS prepended per document (None when the tokenizer adds
    none), ``eos_id`` the document separator. ``vocab_size`` is the largest
    id + 1, added tokens included: every id the tokenizer can emit is below it.
    Encoding adds no special tokens and reads special-token text as text.
    """

    def __init__(self, path: str, tokenizer: tokenizers.Tokenizer, special: SpecialIds,
                 fingerprint: str):
        super().__init__()
        tokenizer.encode_special_tokens = True  # document text never yields a special id
        self._path, self._tokenizer, self._special = path, tokenizer, special
        self._fingerprint = fingerprint
        self._size = max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1
        self._processor = HfProcessor(tokenizer, special, self._size)

    @property
    def path(self) -> str:
        return self._path

    @property
    def fingerprint(self) -> str:
        """Short hash of the tokenizer.json bytes and the chosen BOS/EOS."""
        return self._fingerprint

    @property
    def tokenizer(self) -> HfProcessor:
        return self._processor

    @property
    def bos_id(self) -> Optional[int]:
        return self._special.bos

    @property
    def eos_id(self) -> Optional[int]:
        return self._special.eos

    @property
    def unk_id(self) -> Optional[int]:
        return self._special.unk

    @property
    def _base_vocab_size(self) -> int:
        return self._size

    def _encode(self, s: str) -> Sequence[int]:
        return self._tokenizer.encode(s, add_special_tokens=False).ids

    def _decode(self, ids) -> str:
        return self._processor.decode(ids)

    def _encode_one(self, text: bytes) -> np.ndarray:
        # encode_batch_fast skips the character offsets that encode computes.
        encoding, = self._tokenizer.encode_batch_fast([_as_text(text)], add_special_tokens=False)
        return np.asarray(encoding.ids, np.int32)

    def _encode_many(self, texts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        encodings = self._tokenizer.encode_batch_fast([_as_text(t) for t in texts],
                                                      add_special_tokens=False)
        lengths = np.asarray([len(e.ids) for e in encodings], np.int64)
        values = np.fromiter((i for e in encodings for i in e.ids), np.int32, int(lengths.sum()))
        return values, lengths

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        """int32 ids of a string scalar, or a RaggedTensor of them for a vector of strings."""
        if s.shape.rank == 0:
            ids = tf.numpy_function(self._encode_one, [s], tf.int32, stateful=False)
            return tf.ensure_shape(ids, [None])
        if s.shape.rank != 1:
            raise ValueError(f"{self} encodes string scalars or vectors, not shape {s.shape}.")
        values, lengths = tf.numpy_function(self._encode_many, [s], (tf.int32, tf.int64),
                                            stateful=False)
        return tf.RaggedTensor.from_row_lengths(tf.ensure_shape(values, [None]),
                                                tf.ensure_shape(lengths, [None]))

    def _decode_rows(self, ids: np.ndarray) -> np.ndarray:
        rows = ids.reshape(-1, ids.shape[-1]) if ids.ndim else ids.reshape(1, 0)
        texts = [self._decode(row).encode("utf-8") for row in rows]
        return np.asarray(texts, dtype=object).reshape(ids.shape[:-1])

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        """Strings of int ids ``[..., n]`` (shape ``[...]``)."""
        texts = tf.numpy_function(self._decode_rows, [ids], tf.string, stateful=False)
        return tf.ensure_shape(texts, ids.shape[:-1])

    def __eq__(self, other) -> bool:
        return isinstance(other, HfTokenizerVocabulary) and other.fingerprint == self.fingerprint

    def __hash__(self) -> int:
        return hash(self._fingerprint)

    def __str__(self) -> str:
        return (f"HfTokenizerVocabulary({self._path!r}, size={self._size}, "
                f"bos={self._special.bos}, eos={self._special.eos})")


def load_hf_vocabulary(path: str, fix: str) -> HfTokenizerVocabulary:
    """Reads ``path`` (a tokenizer.json or its directory); ValueError ending in ``fix``."""
    tokenizer_file = os.path.join(path, TOKENIZER_FILE) if tf.io.gfile.isdir(path) else path
    with tf.io.gfile.GFile(tokenizer_file, "rb") as f:
        raw = f.read()
    try:
        tokenizer = tokenizers.Tokenizer.from_str(raw.decode("utf-8"))
    except Exception as e:  # tokenizers reports every parse failure as a bare Exception
        why = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise ValueError(f"{tokenizer_file!r} is not a readable Hugging Face tokenizer.json "
                         f"({why}); {fix}.") from e
    special = special_ids(tokenizer, os.path.dirname(tokenizer_file), fix)
    if special.eos is None:
        raise ValueError(
            f"Hugging Face tokenizer {tokenizer_file!r} defines no EOS token (eos_token in "
            "tokenizer_config.json or special_tokens_map.json, or eos_token_id in config.json), "
            f"which the pipeline needs to end documents; {fix} with an eos_token.")
    digest = hashlib.sha1(raw)
    digest.update(json.dumps([special.bos, special.eos]).encode())
    return HfTokenizerVocabulary(path, tokenizer, special, digest.hexdigest()[:16])


__all__ = ["HfProcessor", "HfTokenizerVocabulary", "SpecialIds", "TOKENIZER_FILE",
           "is_hf_tokenizer_path", "load_hf_vocabulary", "special_ids"]
