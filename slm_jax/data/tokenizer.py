"""SentencePiece training, and loading a tokenizer as a seqio vocabulary that copes with
Llama-style ids.

``load_vocabulary`` reads a SentencePiece ``.model`` (``LlamaCompatibleVocabulary``)
or a Hugging Face ``tokenizer.json`` / a directory holding one
(``hf_tokenizer.HfTokenizerVocabulary``). Both give the same interface: seqio's,
plus ``fingerprint`` (what a saved data order is valid for), ``path`` and a
SentencePieceProcessor-style ``tokenizer``.

seqio was written for T5 vocabularies (pad=0, eos=1, unk=2) and assumes id 0
is padding. Llama/Mistral-style models use unk=0, bos=1, eos=2 and no pad.
How this project keeps the two compatible:

* EOS always comes from the model (``tokenizer.eos_id()``: 2 for Llama, 1 for
  T5), and BOS (1) is prepended per document when the model has one. Ids the
  model lacks (sentencepiece reports -1, e.g. T5's bos) read as ``None``
  here rather than leaking -1 into token streams.
* We never use seqio's decoder input shift (``autoregressive_inputs``), which
  fills segment starts with 0 -- a real token (unk) for Llama. The pipeline
  builds inputs/targets itself from the packed sequence (see pipeline.py).
* Id 0 inside a document is kept, never dropped or taken for padding. With
  ``byte_fallback`` a Llama-style model never emits unk for valid UTF-8 text
  (tested), but a model without byte fallback can. seqio's packer derives both
  lengths and segment ids from ``token != 0``, so the pipeline offsets every
  token by +1 while packing and undoes it afterwards; unk tokens then survive
  packing with their segment id and loss weight (tested).
* Padding in packed batches is written as 0 but is identified only by
  ``segment_ids == 0`` / ``loss_weights == 0``, never by its token value.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Iterable, Iterator
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import seqio  # noqa: E402  (after the TF log level is set)
import sentencepiece as spm  # noqa: E402
import tensorflow as tf  # noqa: E402

from slm_jax.data import hf_tokenizer  # noqa: E402


def _hide_accelerators_from_tensorflow() -> None:
    # tf.data only needs the CPU; left alone, TF would reserve GPU memory
    # that JAX needs.
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        pass  # TF already initialised its devices; nothing left to change.


_hide_accelerators_from_tensorflow()

VOCAB_PATH_BINDING = "DataConfig.vocab_path"
# Beyond this many lines the trainer sees a deterministic uniform sample.
MAX_TRAINING_LINES = 300_000


# --------------------------------------------------------------------------
# Training.


def _read_lines(path: str) -> Iterator[str]:
    """Lines of document text from .jsonl ({"text"}), .tfrecord or plain text."""
    if path.endswith(".jsonl"):
        with tf.io.gfile.GFile(path, "r") as f:
            for row in f:
                if row.strip():
                    yield from json.loads(row).get("text", "").split("\n")
    elif path.endswith((".tfrecord", ".tfrecords")):
        spec = {"text": tf.io.FixedLenFeature([], tf.string)}
        for record in tf.data.TFRecordDataset(path):
            text = tf.io.parse_single_example(record, spec)["text"].numpy()
            yield from text.decode("utf-8").split("\n")
    else:
        with tf.io.gfile.GFile(path, "r") as f:
            for row in f:
                yield row.rstrip("\n")


def _sample_lines(paths: Iterable[str], limit: int, seed: int) -> list[str]:
    """Reservoir sample of non-blank lines: bounded memory, deterministic in seed."""
    rng = random.Random(seed)
    sample: list[str] = []
    seen = 0
    for path in paths:
        for line in _read_lines(path):
            if not line.strip():
                continue
            seen += 1
            if len(sample) < limit:
                sample.append(line)
            else:
                slot = rng.randrange(seen)
                if slot < limit:
                    sample[slot] = line
    return sample


def train_sentencepiece(
    text_files: list[str],
    model_prefix: str,
    *,
    vocab_size: int = 2048,
    seed: int = 0,
    byte_fallback: bool = True,
) -> str:
    """Trains a BPE SentencePiece model with Llama ids and returns the .model path.

    Ids: unk=0, bos=1, eos=2, no pad. Digits are split and (by default) unseen
    bytes fall back to byte pieces, so valid text never maps to unk.
    Normalisation is the identity so that decode(encode(text)) == text.
    ``text_files`` may be .jsonl (``"text"`` field), .tfrecord
    (``tf.train.Example{text}``) or plain text; each line is one sentence.

    Training is deterministic. If ``{model_prefix}.model`` was already trained
    from the same lines with the same settings (recorded in
    ``{model_prefix}.fingerprint``) it is reused without retraining.
    """
    if not text_files:
        raise ValueError("train_sentencepiece needs at least one text file.")
    missing = [p for p in text_files if not tf.io.gfile.exists(p)]
    if missing:
        raise ValueError(f"SentencePiece training files not found: {missing}.")
    settings = dict(
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=byte_fallback,
        split_digits=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        character_coverage=0.9995,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        max_sentence_length=16384,
        num_threads=2,
    )
    lines = _sample_lines(text_files, MAX_TRAINING_LINES, seed)
    if not lines:
        raise ValueError(f"SentencePiece training files contain no text: {list(text_files)}.")
    digest = hashlib.sha256(json.dumps([settings, seed], sort_keys=True).encode())
    for line in lines:
        digest.update(line.encode("utf-8") + b"\n")
    fingerprint = digest.hexdigest()

    model_path = model_prefix + ".model"
    fingerprint_path = model_prefix + ".fingerprint"
    if tf.io.gfile.exists(model_path) and tf.io.gfile.exists(fingerprint_path):
        with tf.io.gfile.GFile(fingerprint_path, "r") as f:
            if f.read().strip() == fingerprint:
                return model_path

    directory = os.path.dirname(model_prefix)
    if directory:
        tf.io.gfile.makedirs(directory)
    spm.set_random_generator_seed(seed)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=model_prefix,
        minloglevel=2,
        **settings,
    )
    with tf.io.gfile.GFile(fingerprint_path, "w") as f:
        f.write(fingerprint + "\n")
    # seqio caches parsed models by path; a retrained file must not be served
    # from that cache.
    cache = getattr(seqio.vocabularies, "_load_model_internal", None)
    if cache is not None and hasattr(cache, "cache_clear"):
        cache.cache_clear()
    return model_path


# --------------------------------------------------------------------------
# Loading.


def _id_or_none(token_id: int) -> Optional[int]:
    return token_id if token_id >= 0 else None


class LlamaCompatibleVocabulary(seqio.SentencePieceVocabulary):
    """seqio's SentencePiece vocabulary with special ids taken from the model.

    Works for Llama-style (unk=0, bos=1, eos=2) and T5-style (pad=0, eos=1,
    unk=2) models alike; an id the model does not define is ``None``.
    ``pad_id`` stays seqio's 0: packed batches mark padding by segment id, so
    the value written there never matters (see the module docstring).
    """

    @property
    def bos_id(self) -> Optional[int]:
        return _id_or_none(self.tokenizer.bos_id())

    @property
    def eos_id(self) -> Optional[int]:
        return _id_or_none(self.tokenizer.eos_id())

    @property
    def unk_id(self) -> Optional[int]:
        return _id_or_none(self.tokenizer.unk_id())

    @property
    def path(self) -> str:
        return self.sentencepiece_model_file

    @property
    def fingerprint(self) -> str:
        """Short hash of the model proto (saved data orders recorded it before HF tokenizers)."""
        return hashlib.sha1(self.sp_model).hexdigest()[:16]


Vocabulary = LlamaCompatibleVocabulary | hf_tokenizer.HfTokenizerVocabulary


def _fix(binding: str) -> str:
    return (f"set {binding} to a SentencePiece .model file or a Hugging Face tokenizer.json "
            "(or the directory holding it)")


def _load_sentencepiece(model_path: str, fix: str) -> LlamaCompatibleVocabulary:
    with tf.io.gfile.GFile(model_path, "rb") as f:
        proto = f.read()
    try:
        processor = spm.SentencePieceProcessor(model_proto=proto)
        pieces = processor.GetPieceSize()
    except RuntimeError:
        pieces = 0
    if pieces == 0:
        raise ValueError(f"{model_path!r} is not a SentencePiece model; {fix}.")
    if processor.eos_id() < 0:
        raise ValueError(
            f"SentencePiece model {model_path!r} defines no EOS piece, which the "
            f"pipeline needs to end documents; {fix} that has eos_id >= 0."
        )
    return LlamaCompatibleVocabulary(model_path)


def load_vocabulary(path: str, binding: str = VOCAB_PATH_BINDING) -> Vocabulary:
    """Loads a SentencePiece .model, or a Hugging Face tokenizer.json or its directory.

    Raises ValueError, naming the path and the gin binding to fix, when the
    path is missing or neither kind of tokenizer, or the tokenizer defines no EOS.
    """
    fix = _fix(binding)
    if not path or not tf.io.gfile.exists(path):
        raise ValueError(f"Tokenizer {path!r} does not exist; {fix}.")
    if hf_tokenizer.is_hf_tokenizer_path(path):
        return hf_tokenizer.load_hf_vocabulary(path, fix)
    if tf.io.gfile.isdir(path):
        raise ValueError(f"{path!r} is a directory without a {hf_tokenizer.TOKENIZER_FILE}; {fix}.")
    return _load_sentencepiece(path, fix)


def token_table(vocabulary: Vocabulary) -> tuple:
    """(pieces by id, bos, eos): equal exactly when two tokenizers give the same token stream."""
    processor = vocabulary.tokenizer
    pieces = tuple(processor.IdToPiece(i) for i in range(processor.GetPieceSize()))
    return pieces, vocabulary.bos_id, vocabulary.eos_id


__all__ = ["LlamaCompatibleVocabulary", "Vocabulary", "load_vocabulary", "token_table",
           "train_sentencepiece"]
