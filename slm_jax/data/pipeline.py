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
chunk has no BOS, its positions restart at 0, and it is packed right after.
seqio's own decoder shift is not used: it writes id 0 at segment starts,
which is a real token (unk) in Llama-style vocabularies, and in byte-level BPE
ones (SmolLM2's <|endoftext|>, Qwen's "!"); ids are offset by one while
packing for the same reason (``_shift_ids``).

Data order (streams.py): the global batch at step ``s`` is a pure function
of the seed, ``s`` and the data -- ``DataConfig.num_streams`` streams, each
reading ``seqio.ShardInfo(k, num_streams)`` of the documents, give
``global_batch_size / num_streams`` rows each. A host builds only the streams
whose rows its devices hold, so the batches do not depend on the number of
hosts, and each stream can be saved and resumed exactly
(:func:`make_train_iterator`). Every stream uses the same seed: seqio shards by
file when there are at least ``num_streams`` files and by example otherwise,
and the latter is only disjoint when all streams read the files in one order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from slm_jax.data import streams, tasks  # noqa: E402  (hides GPUs from TF first)
from slm_jax.data.tasks import TEXT_FEATURE  # noqa: E402

import gin  # noqa: E402
import numpy as np  # noqa: E402
import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402

_REQUIRED = ""  # Sentinel for bindings without a sensible default.

try:  # tf.data's AutoGraph switch has no public name (TF 2.21)
    from tensorflow.python.autograph.core import ag_ctx as _ag_ctx  # noqa: E402
except ImportError:  # pragma: no cover - a TF that moved it: convert as before
    _ag_ctx = None


def _autograph(enabled: bool):
    """Whether tf.data map functions built inside are converted by AutoGraph.

    Converting parses each function's source: ~3 s per pipeline opened, several times the
    cost of reading the first batches. Only seqio's packer needs it (it loops over a tensor);
    every other stage here is plain tensor ops and traces the same without it.
    """
    if _ag_ctx is None:
        return contextlib.nullcontext()
    status = _ag_ctx.Status.ENABLED if enabled else _ag_ctx.Status.DISABLED
    return _ag_ctx.ControlStatusCtx(status=status)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the training text lives and how it is cut into batches."""

    file_pattern: str = _REQUIRED  # TFRecord files of tf.train.Example{text} (source "files")
    # SentencePiece .model, or a Hugging Face tokenizer.json or its directory (tokenizer.py)
    vocab_path: str = _REQUIRED
    seq_len: int = 2048
    global_batch_size: int = 8  # sequences per global batch (all hosts together)
    seed: int = 0
    shuffle: bool = True
    shuffle_buffer: int = 1000  # documents
    task_name: Optional[str] = None  # default derived from the source and vocab_path
    source: str = "files"  # "files" or "tfds" (see tasks.py)
    tfds_name: Optional[str] = None  # e.g. 'huggingface:open_web_math__open_web_math' (source "tfds")
    tfds_data_dir: Optional[str] = None  # tfds data_dir; alone: a prepared dataset's version dir
    # Streams making up each global batch; the data order depends on it (and
    # not on the hosts), so fix it for a run: a multiple of every host count
    # you may use that divides global_batch_size.
    num_streams: int = 1

    def __post_init__(self):
        if self.source not in tasks.SOURCES:
            raise ValueError(f"DataConfig.source={self.source!r} must be one of {tasks.SOURCES}.")
        required = ["vocab_path"] + (["file_pattern"] if self.source == "files" else [])
        for field in sorted(required):
            if not getattr(self, field):
                raise ValueError(
                    f"DataConfig.{field} is required; bind it in gin "
                    f"(DataConfig.{field} = '...') or pass {field}=."
                )
        if self.source == "tfds" and not (self.tfds_name or self.tfds_data_dir):
            raise ValueError("DataConfig.source='tfds' needs DataConfig.tfds_name (e.g. "
                             f"{'huggingface:open_web_math__open_web_math'}) or DataConfig.tfds_data_dir.")
        for field in ("seq_len", "global_batch_size", "shuffle_buffer", "num_streams"):
            if getattr(self, field) < 1:
                raise ValueError(f"DataConfig.{field} must be positive, got {getattr(self, field)}.")
        streams.layout(self.num_streams, self.global_batch_size)

    def _inputs(self) -> str:
        if self.source == "files":
            return self.file_pattern
        return f"tfds:{self.tfds_name or ''}@{self.tfds_data_dir or ''}"

    def resolved_task_name(self) -> str:
        """The seqio task name: ``task_name`` or one derived from the inputs."""
        if self.task_name:
            return self.task_name
        digest = hashlib.sha1(f"{self._inputs()}\0{self.vocab_path}".encode()).hexdigest()[:12]
        stem = re.sub(r"\W+", "_", os.path.basename(self._inputs().rstrip("/")))[:40]
        return f"slm_text_{stem}_{digest}"


def register_task(config: DataConfig) -> seqio.Task:
    """Registers the config's seqio Task (files or TFDS) under its resolved name."""
    return tasks.register_corpus_task(
        config.resolved_task_name(), config.vocab_path, source=config.source,
        file_pattern=config.file_pattern, tfds_name=config.tfds_name,
        tfds_data_dir=config.tfds_data_dir)


# --------------------------------------------------------------------------
# tf.data stages.


class DocumentFilter:
    """Drops empty (blank) and non-UTF-8 documents (skipped.TRAINING_KINDS) before
    tokenising, and counts them.

    Such a document is not fatal: it is left out of the data order and
    ``skipped`` (documents this process's streams read so far, including
    tf.data's read-ahead) grows; the trainer logs it as ``data_skipped_docs``.
    It runs before the resume cursor counts documents, so resuming stays exact.
    """

    def __init__(self):
        self._count = tf.Variable(0, dtype=tf.int64, trainable=False)

    @property
    def skipped(self) -> int:
        return int(self._count.numpy())

    def __call__(self, documents: tf.data.Dataset, text_key: str = TEXT_FEATURE) -> tf.data.Dataset:
        if text_key not in documents.element_spec:
            return documents

        def keep(example):
            text = example[text_key]
            utf8 = tf.equal(tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace"),
                            text)  # invalid bytes would have become U+FFFD
            ok = tf.logical_and(tf.strings.length(tf.strings.strip(text)) > 0, utf8)
            with tf.control_dependencies([self._count.assign_add(tf.cast(~ok, tf.int64))]):
                return tf.identity(ok)

        return documents.filter(keep)


def _documents(task: seqio.Task, config: DataConfig, shard_index: int, num_shards: int,
               repeat: bool, skip: int, doc_filter: Optional[DocumentFilter] = None) -> tf.data.Dataset:
    """Tokenised documents of one shard in the seed's order, from document ``skip`` on.

    What seqio's ``Task.get_dataset`` does, except that documents are shuffled
    before tokenising: skipping them on a restart then costs only reading.
    Empty and non-UTF-8 documents are dropped first (see DocumentFilter).
    """
    source = task.source
    shard = seqio.ShardInfo(index=shard_index, num_shards=num_shards) if num_shards > 1 else None
    by_source = shard is None or source.supports_arbitrary_sharding or (
        len(source.list_shards(split="train")) >= num_shards)
    documents = source.get_dataset(split="train", shuffle=config.shuffle, seed=config.seed,
                                   shard_info=shard if by_source else None)
    if not by_source:
        documents = documents.shard(num_shards, shard_index)
    documents = (doc_filter or DocumentFilter())(documents)
    if repeat:
        documents = documents.repeat()
    if config.shuffle:
        documents = documents.shuffle(config.shuffle_buffer, seed=config.seed)
    documents = task.preprocess_precache(documents.skip(skip), seed=config.seed)
    return task.preprocess_postcache(documents, sequence_length=None, seed=config.seed)


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
    config: DataConfig, *, shard_index: int = 0, num_shards: int = 1, repeat: bool = True,
    start: Optional[streams.StreamPosition] = None, task: Optional[seqio.Task] = None,
    doc_filter: Optional[DocumentFilter] = None,
) -> tf.data.Dataset:
    """Rows of ``seq_len + 1`` packed tokens for one shard, from ``start`` on.

    Yields ``targets``, ``targets_segment_ids`` and ``targets_positions``
    (int32); padding has segment id 0 and token 0. seqio packs blocks of
    ``seq_len + 1`` chunks independently, which is what lets ``start``
    (a :class:`streams.StreamPosition`) restart at a block.
    """
    row_len = config.seq_len + 1
    task = task or register_task(config)
    start = start or streams.StreamPosition()

    def unshift(row):
        is_token = row["targets_segment_ids"] > 0
        return {**row, "targets": tf.where(is_token, row["targets"] - 1, 0)}

    with _autograph(False):
        documents = _documents(task, config, shard_index, num_shards, repeat, start.block_doc,
                               doc_filter)
        chunks = _shift_ids(_chunk_documents(documents, row_len).skip(start.block_chunk), +1)
        with _autograph(True):
            packed = seqio.utils.trim_and_pack_dataset(chunks, {"targets": row_len})
        packed = packed.map(unshift, num_parallel_calls=tf.data.AUTOTUNE).skip(start.rows_in_block)
    options = tf.data.Options()
    options.deterministic = True  # the data order is part of the experiment
    return packed.with_options(options)


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
    """Batches of one file shard, as numpy arrays (not resumable; see host_streams).

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
# Streams: the host-independent, resumable data order.


def _order_fingerprint(config: DataConfig, task: seqio.Task) -> dict:
    """What the saved positions of a stream are only valid for."""
    if config.source == "files":
        # Names, not full paths: the same shards may move from disk to a bucket.
        names = [os.path.basename(f) for f in task.source.list_shards(split="train")]
        inputs = f"{len(names)} files, sha1 " + hashlib.sha1("\n".join(names).encode()).hexdigest()[:16]
    else:
        inputs = config._inputs()
    vocabulary = task.output_features["targets"].vocabulary
    return {"inputs": inputs, "vocabulary": vocabulary.fingerprint,
            **{k: getattr(config, k) for k in ("seq_len", "global_batch_size", "num_streams",
                                               "seed", "shuffle", "shuffle_buffer")}}


def stream_set(config: DataConfig, stream_ids: Sequence[int], *, repeat: bool = True,
               doc_filter: Optional[DocumentFilter] = None) -> streams.StreamSet:
    """The given streams' rows of every global batch, as numpy LM batches (``BATCH_KEYS``)."""
    stream_layout = streams.layout(config.num_streams, config.global_batch_size)
    task = register_task(config)
    rows = stream_layout.rows_per_stream

    def open_rows(stream: int, start: streams.StreamPosition):
        dataset = packed_dataset(config, shard_index=stream, num_shards=config.num_streams,
                                 repeat=repeat, start=start, task=task, doc_filter=doc_filter)
        return dataset.batch(rows).prefetch(2).as_numpy_iterator()

    def finish(packed):
        return lm_view(packed["targets"], packed["targets_segment_ids"], packed["targets_positions"])

    return streams.StreamSet(
        open_rows, stream_ids, stream_layout, finish=finish,
        eos_id=task.output_features["targets"].vocabulary.eos_id,
        block_chunks=config.seq_len + 1,  # seqio packs this many chunks at a time
        fingerprint=_order_fingerprint(config, task))


def host_streams(config: DataConfig, host_index: int = 0, num_hosts: int = 1, *,
                 repeat: bool = True) -> streams.StreamSet:
    """Host ``host_index`` of ``num_hosts``: rows ``[h*B/H, (h+1)*B/H)`` of every global batch.

    Concatenating the batches of hosts 0..H-1 gives the global batch, the
    same for every H that divides ``DataConfig.num_streams``.
    """
    stream_layout = streams.layout(config.num_streams, config.global_batch_size, num_hosts)
    if not 0 <= host_index < num_hosts:
        raise ValueError(f"host_index {host_index} is outside [0, {num_hosts}).")
    return stream_set(config, stream_layout.host_streams(host_index, num_hosts), repeat=repeat)


__all__ = [
    "DataConfig", "DocumentFilter", "host_batch_size", "host_batches", "host_streams", "lm_view",
    "packed_dataset", "register_task", "stream_set",
]
