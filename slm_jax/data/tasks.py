"""seqio Tasks over text documents: TFRecord files of ``tf.train.Example{text}``
(source ``"files"``) or a tensorflow-datasets dataset (source ``"tfds"``).

A task yields one example per document: ``{"targets": int32[n]}`` holding
``[BOS] + tokens + [EOS]``. Documents are not trimmed here; pipeline.py cuts
long ones into model-sized chunks so no text is thrown away.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from slm_jax.data.tokenizer import load_vocabulary  # noqa: E402  (hides GPUs from TF first)

import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402

TEXT_FEATURE = "text"
FILE_PATTERN_BINDING = "DataConfig.file_pattern"
SOURCES = ("files", "tfds")


def write_text_tfrecord(texts: Iterable[str], tfrecord_path: str) -> int:
    """Writes each non-empty text as ``tf.train.Example{text}``; returns the count."""
    written = 0
    with tf.io.TFRecordWriter(tfrecord_path) as writer:
        for text in texts:
            if not text or not text.strip():
                continue
            feature = tf.train.Feature(bytes_list=tf.train.BytesList(value=[text.encode("utf-8")]))
            example = tf.train.Example(features=tf.train.Features(feature={TEXT_FEATURE: feature}))
            writer.write(example.SerializeToString())
            written += 1
    return written


def jsonl_to_tfrecord(jsonl_path: str, tfrecord_path: str, text_key: str = "text") -> int:
    """Converts a jsonl file of ``{text_key: ...}`` rows to TFRecord; returns docs written.

    Rows with an empty or missing text are skipped.
    """

    def texts():
        with tf.io.gfile.GFile(jsonl_path, "r") as f:
            for row in f:
                if row.strip():
                    yield json.loads(row).get(text_key) or ""

    return write_text_tfrecord(texts(), tfrecord_path)


def resolve_files(file_pattern: str) -> list[str]:
    """Sorted files matching a local or ``gs://`` glob; ValueError when none do."""
    files = sorted(tf.io.gfile.glob(file_pattern)) if file_pattern else []
    if not files:
        raise ValueError(
            f"No files match {file_pattern!r}; set {FILE_PATTERN_BINDING} to a glob of "
            "TFRecord files of tf.train.Example{text}."
        )
    folders = [f for f in files if tf.io.gfile.isdir(f)]
    if folders:
        raise ValueError(
            f"{FILE_PATTERN_BINDING}={file_pattern!r} matches the directory {folders[0]!r}; set "
            f"{FILE_PATTERN_BINDING} to a glob of the TFRecord files in it, e.g. "
            f"'{folders[0].rstrip('/')}/*.tfrecord'.")
    return files


def _prepend_bos(dataset: tf.data.Dataset, bos_id: int) -> tf.data.Dataset:
    def prepend(example):
        targets = example["targets"]
        return {**example, "targets": tf.concat([tf.constant([bos_id], targets.dtype), targets], 0)}

    return dataset.map(prepend, num_parallel_calls=tf.data.AUTOTUNE)


def text_preprocessors(vocabulary, text_key: str = TEXT_FEATURE, add_bos: bool = True) -> list:
    """Tokenise ``text_key`` into ``targets``, prepend BOS (when the model has one), append EOS.

    ``vocabulary.bos_id`` is None when there is no BOS to prepend: a SentencePiece model
    without a bos piece, or a Hugging Face tokenizer that does not add one itself
    (hf_tokenizer.py). Tokenising adds no special tokens of its own.

    append_eos, not append_eos_after_trim: long documents are chunked later rather than
    truncated. Every source (files or TFDS) tokenises through these same steps.
    """
    preprocessors = [
        functools.partial(seqio.preprocessors.rekey, key_map={"targets": text_key}),
        functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
    ]
    if add_bos and vocabulary.bos_id is not None:
        preprocessors.append(functools.partial(_prepend_bos, bos_id=vocabulary.bos_id))
    preprocessors.append(seqio.preprocessors.append_eos)
    return preprocessors


def _register(name: str, source: seqio.DataSource, vocabulary, preprocessors) -> seqio.Task:
    """Adds the task, replacing one of the same name."""
    seqio.TaskRegistry.remove(name)
    return seqio.TaskRegistry.add(
        name, source=source, preprocessors=preprocessors,
        output_features={"targets": seqio.Feature(vocabulary=vocabulary, add_eos=True,
                                                  dtype=tf.int32)})


def register_text_task(
    name: str,
    file_pattern: str,
    vocab_path: str,
    *,
    add_bos: bool = True,
    shuffle_files: bool = True,
) -> seqio.Task:
    """Registers (or re-registers) a seqio Task reading documents from TFRecords.

    The task tokenizes the ``"text"`` feature into ``"targets"``, prepends the
    model's BOS (when ``add_bos`` and the model has one) and appends its EOS.
    Files are resolved once, here: seqio caches glob results per process, so a
    pattern would not see files created later. Registering an existing name
    replaces the old task. Raises ValueError for an unmatched pattern or a bad
    vocabulary, naming the gin binding to fix.
    """
    files = resolve_files(file_pattern)
    vocabulary = load_vocabulary(vocab_path)
    source = seqio.TFExampleDataSource(
        split_to_filepattern={"train": files},
        feature_description={TEXT_FEATURE: tf.io.FixedLenFeature([], tf.string)},
        # A one-file buffer turns seqio's file shuffle into a no-op.
        file_shuffle_buffer_size=None if shuffle_files else 1,
    )
    return _register(name, source, vocabulary, text_preprocessors(vocabulary, add_bos=add_bos))


def tfds_source(tfds_name: Optional[str], data_dir: Optional[str] = None) -> seqio.TfdsDataSource:
    """The ``train`` split of a TFDS dataset: by name, or prepared in ``data_dir``."""
    if tfds_name:
        return seqio.TfdsDataSource(tfds_name=tfds_name, tfds_data_dir=data_dir,
                                    splits={"train": "train"})
    if not data_dir:
        raise ValueError("DataConfig.source='tfds' needs DataConfig.tfds_name (e.g. "
                         "'huggingface:open_web_math__open_web_math') or DataConfig.tfds_data_dir "
                         "(a prepared dataset's version directory, holding dataset_info.json).")
    # Without a name seqio reads the directory with tfds.builder_from_directory:
    # no builder code runs, so no network and no Hugging Face packages.
    return seqio.TfdsDataSource(tfds_data_dir=data_dir, splits={"train": "train"}, read_only=True)


def register_tfds_text_task(name: str, vocab_path: str, *, tfds_name: Optional[str] = None,
                            data_dir: Optional[str] = None, text_key: str = "text") -> seqio.Task:
    """Registers (or replaces) a Task over the ``text_key`` feature of a TFDS dataset."""
    vocabulary = load_vocabulary(vocab_path)
    return _register(name, tfds_source(tfds_name, data_dir), vocabulary,
                     text_preprocessors(vocabulary, text_key))


def register_corpus_task(name: str, vocab_path: str, *, source: str = "files",
                         file_pattern: Optional[str] = None, tfds_name: Optional[str] = None,
                         tfds_data_dir: Optional[str] = None) -> seqio.Task:
    """Registers a text Task named ``name`` over TFRecord files or a TFDS dataset."""
    if source == "files":
        return register_text_task(name, file_pattern, vocab_path)
    if source == "tfds":
        return register_tfds_text_task(name, vocab_path, tfds_name=tfds_name,
                                       data_dir=tfds_data_dir)
    raise ValueError(f"DataConfig.source={source!r} must be one of {SOURCES}.")


__all__ = ["SOURCES", "jsonl_to_tfrecord", "register_corpus_task", "register_text_task",
           "register_tfds_text_task", "resolve_files", "text_preprocessors", "tfds_source",
           "write_text_tfrecord"]
