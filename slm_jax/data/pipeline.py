"""Packed language-modeling batches: per-host numpy and global jax.Arrays.

Each document (``[BOS] text [EOS]``, see tasks.py) is cut into chunks of at
most ``seq_len + 1`` tokens, chunks are packed into rows of ``seq_len + 1``
with seqio's packer, and each row gives a next-token-prediction view:

    inputs      = row[:-1]         targets   = row[1:]
    segment_ids = seg[:-1]         positions = pos[:-1]
    loss_weights = 1 where the target belongs to the same segment as the
                   input (and is not padding), else 0

so no prediction crosses a document boundary and padding (segment 0) never
counts. A document longer than a row continues in the next chunk: that
chunk has no BOS, its positions restart at 0, and it is packed right after. seqio's own decoder shift is not used: it writes id 0 at segment
starts, which is a real token (unk) in Llama-style vocabularies.

Sharding: host ``i`` of ``n`` reads shard ``ShardInfo(i, n)``. seqio shards
by file when there are at least ``n`` files and by example otherwise; the
latter is only disjoint because every host uses the same seed, so keep
``DataConfig.seed`` identical across hosts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Iterator, Mapping
from typing import Optional, Union

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from slm_jax.data.tasks import register_text_task  # noqa: E402  (hides GPUs from TF first)

import gin  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402

BATCH_KEYS = ("inputs", "targets", "segment_ids", "positions", "loss_weights")
_REQUIRED = ""  # Sentinel for bindings without a sensible default.


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the training text lives and how it is cut into batches."""

    file_pattern: str = _REQUIRED  # TFRecord files of tf.train.Example{text}
    vocab_path: str = _REQUIRED  # SentencePiece .model
    seq_len: int = 2048
    global_batch_size: int = 8  # sequences per global batch (all hosts together)
    seed: int = 0
    shuffle: bool = True
    shuffle_buffer: int = 1000
    task_name: Optional[str] = None  # default derived from file_pattern and vocab_path

    def __post_init__(self):
        for field in ("file_pattern", "vocab_path"):
            if not getattr(self, field):
                raise ValueError(
                    f"DataConfig.{field} is required; bind it in gin "
                    f"(DataConfig.{field} = '...') or pass {field}=."
                )
        for field in ("seq_len", "global_batch_size", "shuffle_buffer"):
            if getattr(self, field) < 1:
                raise ValueError(f"DataConfig.{field} must be positive, got {getattr(self, field)}.")

    def resolved_task_name(self) -> str:
        """The seqio task name: ``task_name`` or one derived from the inputs."""
        if self.task_name:
            return self.task_name
        digest = hashlib.sha1(f"{self.file_pattern}\0{self.vocab_path}".encode()).hexdigest()[:12]
        stem = re.sub(r"\W+", "_", os.path.basename(self.file_pattern.rstrip("/")))[:40]
        return f"slm_text_{stem}_{digest}"


# --------------------------------------------------------------------------
# tf.data stages.


def _chunk_documents(dataset: tf.data.Dataset, max_len: int) -> tf.data.Dataset:
    """Cuts each document into pieces of at most ``max_len`` tokens (no trimming)."""

    def chunks(example):
        tokens = example["targets"]
        count = (tf.size(tokens) + max_len - 1) // max_len

        def piece(i):
            start = tf.cast(i, tf.int32) * max_len
            return {"targets": tokens[start : start + max_len]}

        return tf.data.Dataset.range(tf.cast(count, tf.int64)).map(piece)

    return dataset.flat_map(chunks)


def _shift_ids(dataset: tf.data.Dataset, offset: int) -> tf.data.Dataset:
    # seqio's packer measures lengths and segments by `token != 0`; shifting
    # ids up by one while packing keeps a genuine id 0 (Llama's unk) intact.
    return dataset.map(
        lambda ex: {"targets": ex["targets"] + offset}, num_parallel_calls=tf.data.AUTOTUNE
    )


def packed_dataset(
    config: DataConfig, *, shard_index: int = 0, num_shards: int = 1, repeat: bool = True
) -> tf.data.Dataset:
    """Rows of ``seq_len + 1`` packed tokens for one host's shard.

    Yields ``targets``, ``targets_segment_ids`` and ``targets_positions``
    (int32); padding has segment id 0 and token 0.
    """
    row_len = config.seq_len + 1
    task = register_text_task(config.resolved_task_name(), config.file_pattern, config.vocab_path)
    documents = task.get_dataset(
        sequence_length={"targets": row_len},
        split="train",
        shuffle=config.shuffle,
        shuffle_buffer_size=config.shuffle_buffer,
        seed=config.seed,
        shard_info=seqio.ShardInfo(index=shard_index, num_shards=num_shards),
        num_epochs=None if repeat else 1,
        trim_output_features=False,  # chunked below instead of truncated
    )
    chunks = _shift_ids(_chunk_documents(documents, row_len), +1)
    packed = seqio.utils.trim_and_pack_dataset(chunks, {"targets": row_len})

    def unshift(row):
        is_token = row["targets_segment_ids"] > 0
        return {**row, "targets": tf.where(is_token, row["targets"] - 1, 0)}

    return packed.map(unshift, num_parallel_calls=tf.data.AUTOTUNE)


# --------------------------------------------------------------------------
# Numpy batches.


def lm_view(tokens: np.ndarray, segment_ids: np.ndarray, positions: np.ndarray) -> dict[str, np.ndarray]:
    """Turns packed rows ``[b, T+1]`` into the next-token batch ``[b, T]``."""
    same_segment = segment_ids[:, 1:] == segment_ids[:, :-1]
    return {
        "inputs": tokens[:, :-1].astype(np.int32),
        "targets": tokens[:, 1:].astype(np.int32),
        "segment_ids": segment_ids[:, :-1].astype(np.int32),
        "positions": positions[:, :-1].astype(np.int32),
        "loss_weights": (same_segment & (segment_ids[:, 1:] > 0)).astype(np.float32),
    }


def host_batch_size(config: DataConfig, num_shards: int) -> int:
    """Sequences per host batch; ValueError unless the global batch splits evenly."""
    if num_shards < 1 or config.global_batch_size % num_shards:
        raise ValueError(
            f"DataConfig.global_batch_size={config.global_batch_size} must be divisible by "
            f"the number of data shards (process count) {num_shards}."
        )
    return config.global_batch_size // num_shards


def host_batches(
    config: DataConfig, *, shard_index: int = 0, num_shards: int = 1, repeat: bool = True
) -> Iterator[dict[str, np.ndarray]]:
    """This host's share of each global batch, as numpy arrays.

    Every batch has ``global_batch_size // num_shards`` rows and exactly the
    keys ``BATCH_KEYS`` (int32 ``[b, seq_len]``, ``loss_weights`` float32).
    With ``repeat=False`` the data is read once and the last batch is filled
    up with all-padding rows (weight 0) so shapes never change.
    Configuration errors raise ValueError here, not on the first ``next``.
    """
    batch_size = host_batch_size(config, num_shards)
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index {shard_index} is outside [0, {num_shards}).")
    rows = packed_dataset(config, shard_index=shard_index, num_shards=num_shards, repeat=repeat)
    batches = rows.batch(batch_size).prefetch(2)
    return (_to_lm_batch(b, batch_size) for b in batches.as_numpy_iterator())


def _to_lm_batch(packed: Mapping[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    missing = batch_size - packed["targets"].shape[0]
    arrays = [packed["targets"], packed["targets_segment_ids"], packed["targets_positions"]]
    if missing:
        arrays = [np.pad(a, ((0, missing), (0, 0))) for a in arrays]
    return lm_view(*arrays)


# --------------------------------------------------------------------------
# Global arrays.


ShardingArg = Union[jax.sharding.Sharding, Mapping[str, jax.sharding.Sharding], None]


def _shardings_by_key(mesh: jax.sharding.Mesh, batch_sharding: ShardingArg) -> dict:
    if batch_sharding is None:
        # Batch axis split over every mesh axis: plain data parallelism.
        batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(mesh.axis_names))
    if isinstance(batch_sharding, Mapping):
        return {k: batch_sharding[k] for k in BATCH_KEYS}
    return {k: batch_sharding for k in BATCH_KEYS}


def batch_spec(config: DataConfig, batch_sharding: ShardingArg = None) -> dict[str, jax.ShapeDtypeStruct]:
    """Global batch shapes and dtypes (with shardings when given), for jit tracing."""
    shape = (config.global_batch_size, config.seq_len)
    shardings = batch_sharding if isinstance(batch_sharding, Mapping) else {k: batch_sharding for k in BATCH_KEYS}
    return {
        k: jax.ShapeDtypeStruct(shape, np.float32 if k == "loss_weights" else np.int32, sharding=shardings[k])
        for k in BATCH_KEYS
    }


def global_batches(
    config: DataConfig, mesh: jax.sharding.Mesh, batch_sharding: ShardingArg = None, *, repeat: bool = True
) -> Iterator[dict[str, jax.Array]]:
    """Global batches as jax.Arrays, each process feeding its local rows.

    ``batch_sharding`` (one Sharding for all keys, or one per key) defaults to
    the batch axis split across all axes of ``mesh``.
    """
    shardings = _shardings_by_key(mesh, batch_sharding)
    global_shape = (config.global_batch_size, config.seq_len)
    local = host_batches(
        config, shard_index=jax.process_index(), num_shards=jax.process_count(), repeat=repeat
    )
    return (
        {k: jax.make_array_from_process_local_data(shardings[k], v, global_shape) for k, v in batch.items()}
        for batch in local
    )


__all__ = [
    "BATCH_KEYS", "DataConfig", "batch_spec", "global_batches", "host_batch_size",
    "host_batches", "lm_view", "packed_dataset",
]
