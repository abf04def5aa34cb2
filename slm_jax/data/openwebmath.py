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
``{"targets": [BOS] + tokens + [EOS]}`` (slm_jax/data/tasks.py, which also holds the
source switch every DataConfig goes through).
"""

from __future__ import annotations

import os
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import seqio  # noqa: E402

from slm_jax.data import tasks  # noqa: E402  (hides GPUs from TF first)

TASK_NAME = "openwebmath"
HF_DATASET = "open-web-math/open-web-math"
TFDS_NAME = "huggingface:open_web_math__open_web_math"


def register_openwebmath(vocab_path: str, *, source: str = "files", file_pattern: Optional[str] = None,
                         tfds_name: Optional[str] = TFDS_NAME,
                         tfds_data_dir: Optional[str] = None) -> seqio.Task:
    """Registers the ``openwebmath`` Task (``seqio.get_mixture_or_task("openwebmath")``)."""
    return tasks.register_corpus_task(TASK_NAME, vocab_path, source=source,
                                      file_pattern=file_pattern, tfds_name=tfds_name,
                                      tfds_data_dir=tfds_data_dir)


__all__ = ["HF_DATASET", "TASK_NAME", "TFDS_NAME", "register_openwebmath"]
