"""The OpenWebMath corpus as the seqio Task ``openwebmath``, and the choice of its source.

Two sources, picked by ``DataConfig.source`` (or ``register_openwebmath(source=)``):

* ``"files"``: TFRecord shards of ``tf.train.Example{text}`` on local disk or
  ``gs://`` -- what ``python -m slm_jax.data.prepare`` writes from the Hugging
  Face parquet release. Recommended: no network and no Hugging Face packages
  on the training hosts.
* ``"tfds"``: tensorflow-datasets. ``tfds_name`` names a TFDS dataset, e.g.
  ``huggingface:open_web_math__open_web_math`` (TFDS spells the Hugging Face
  id ``open-web-math/open-web-math`` with ``__``), which tfds downloads and
  converts on first use; that needs the network and the ``datasets`` package
  on every host. With ``tfds_name`` empty, ``tfds_data_dir`` is the version
  directory of an already prepared TFDS dataset (the one holding
  ``dataset_info.json``) and is read offline.

Either way the task yields one example per document,
``{"targets": [BOS] + tokens + [EOS]}``, exactly like ``tasks.register_text_task``.
"""

from __future__ import annotations

import functools
import os
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from slm_jax.data import tasks  # noqa: E402  (hides GPUs from TF first)
from slm_jax.data.tokenizer import load_vocabulary  # noqa: E402

import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402

TASK_NAME = "openwebmath"
HF_DATASET = "open-web-math/open-web-math"
TFDS_NAME = "huggingface:open_web_math__open_web_math"
SOURCES = ("files", "tfds")


def _prepend_bos(dataset: tf.data.Dataset, bos_id: int) -> tf.data.Dataset:
    def prepend(example):
        targets = example["targets"]
        return {**example, "targets": tf.concat([tf.constant([bos_id], targets.dtype), targets], 0)}

    return dataset.map(prepend, num_parallel_calls=tf.data.AUTOTUNE)


def _text_preprocessors(vocabulary, text_key: str) -> list:
    # The same steps as tasks.register_text_task, so both sources tokenise alike.
    preprocessors = [
        functools.partial(seqio.preprocessors.rekey, key_map={"targets": text_key}),
        functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
    ]
    if vocabulary.bos_id is not None:
        preprocessors.append(functools.partial(_prepend_bos, bos_id=vocabulary.bos_id))
    preprocessors.append(seqio.preprocessors.append_eos)
    return preprocessors


def tfds_source(tfds_name: Optional[str], data_dir: Optional[str] = None) -> seqio.TfdsDataSource:
    """The ``train`` split of a TFDS dataset: by name, or prepared in ``data_dir``."""
    if tfds_name:
        return seqio.TfdsDataSource(tfds_name=tfds_name, tfds_data_dir=data_dir,
                                    splits={"train": "train"})
    if not data_dir:
        raise ValueError("DataConfig.source='tfds' needs DataConfig.tfds_name (e.g. "
                         f"{TFDS_NAME!r}) or DataConfig.tfds_data_dir (a prepared dataset's "
                         "version directory, holding dataset_info.json).")
    # Without a name seqio reads the directory with tfds.builder_from_directory:
    # no builder code runs, so no network and no Hugging Face packages.
    return seqio.TfdsDataSource(tfds_data_dir=data_dir, splits={"train": "train"}, read_only=True)


def register_tfds_text_task(name: str, vocab_path: str, *, tfds_name: Optional[str] = None,
                            data_dir: Optional[str] = None, text_key: str = "text") -> seqio.Task:
    """Registers (or replaces) a Task over the ``text_key`` feature of a TFDS dataset."""
    vocabulary = load_vocabulary(vocab_path)
    seqio.TaskRegistry.remove(name)
    return seqio.TaskRegistry.add(
        name,
        source=tfds_source(tfds_name, data_dir),
        preprocessors=_text_preprocessors(vocabulary, text_key),
        output_features={"targets": seqio.Feature(vocabulary=vocabulary, add_eos=True, dtype=tf.int32)},
    )


def register_corpus_task(name: str, vocab_path: str, *, source: str = "files",
                         file_pattern: Optional[str] = None, tfds_name: Optional[str] = None,
                         tfds_data_dir: Optional[str] = None) -> seqio.Task:
    """Registers a text Task named ``name`` over TFRecord files or a TFDS dataset."""
    if source == "files":
        return tasks.register_text_task(name, file_pattern, vocab_path)
    if source == "tfds":
        return register_tfds_text_task(name, vocab_path, tfds_name=tfds_name, data_dir=tfds_data_dir)
    raise ValueError(f"DataConfig.source={source!r} must be one of {SOURCES}.")


def register_openwebmath(vocab_path: str, *, source: str = "files", file_pattern: Optional[str] = None,
                         tfds_name: Optional[str] = TFDS_NAME,
                         tfds_data_dir: Optional[str] = None) -> seqio.Task:
    """Registers the ``openwebmath`` Task (``seqio.get_mixture_or_task("openwebmath")``)."""
    return register_corpus_task(TASK_NAME, vocab_path, source=source, file_pattern=file_pattern,
                                tfds_name=tfds_name, tfds_data_dir=tfds_data_dir)


__all__ = ["HF_DATASET", "SOURCES", "TASK_NAME", "TFDS_NAME", "register_corpus_task",
           "register_openwebmath", "register_tfds_text_task", "tfds_source"]
