"""seqio Tasks over TFRecord files of ``tf.train.Example{text}`` documents.

A task yields one example per document: ``{"targets": int32[n]}`` holding
``[BOS] + tokens + [EOS]``. Documents are not trimmed here; pipeline.py cuts
long ones into model-sized chunks so no text is thrown away.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from slm_jax.data.tokenizer import load_vocabulary  # noqa: E402  (hides GPUs from TF first)

import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402

TEXT_FEATURE = "text"
FILE_PATTERN_BINDING = "DataConfig.file_pattern"


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
    return files


def _prepend_bos(dataset: tf.data.Dataset, bos_id: int) -> tf.data.Dataset:
    def prepend(example):
        targets = example["targets"]
        return {**example, "targets": tf.concat([tf.constant([bos_id], targets.dtype), targets], 0)}

    return dataset.map(prepend, num_parallel_calls=tf.data.AUTOTUNE)


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
    preprocessors = [
        functools.partial(seqio.preprocessors.rekey, key_map={"targets": TEXT_FEATURE}),
        functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
    ]
    if add_bos and vocabulary.bos_id is not None:
        preprocessors.append(functools.partial(_prepend_bos, bos_id=vocabulary.bos_id))
    # append_eos, not append_eos_after_trim: long documents are chunked later
    # rather than truncated.
    preprocessors.append(seqio.preprocessors.append_eos)
    source = seqio.TFExampleDataSource(
        split_to_filepattern={"train": files},
        feature_description={TEXT_FEATURE: tf.io.FixedLenFeature([], tf.string)},
        # A one-file buffer turns seqio's file shuffle into a no-op.
        file_shuffle_buffer_size=None if shuffle_files else 1,
    )
    seqio.TaskRegistry.remove(name)
    return seqio.TaskRegistry.add(
        name,
        source=source,
        preprocessors=preprocessors,
        output_features={
            "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True, dtype=tf.int32)
        },
    )


__all__ = ["jsonl_to_tfrecord", "register_text_task", "resolve_files", "write_text_tfrecord"]
