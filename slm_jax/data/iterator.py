"""Global batches (dicts of jax.Arrays) from the per-host packed streams, in the
host-independent, resumable data order (pipeline.py builds the streams, streams.py
follows their positions; the trainer saves ``TrainIterator.state()`` in its checkpoint).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
from collections.abc import Iterator, Mapping
from typing import Optional, Union

import jax
import numpy as np
from jax.experimental import multihost_utils

from slm_jax.data import BATCH_KEYS, streams, tasks
from slm_jax.data.pipeline import DataConfig, DocumentFilter, stream_set

import tensorflow as tf  # after pipeline, which sets TF's log level before TF loads

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
    shardings = (batch_sharding if isinstance(batch_sharding, Mapping)
                 else {k: batch_sharding for k in BATCH_KEYS})
    return {
        k: jax.ShapeDtypeStruct(shape, np.float32 if k == "loss_weights" else np.int32, sharding=shardings[k])
        for k in BATCH_KEYS
    }


def _rows_by_process(shardings: Mapping[str, jax.sharding.Sharding], shape) -> dict[int, set[int]]:
    """Global batch rows each process's devices hold (any key)."""
    rows: dict[int, set[int]] = {}
    for sharding in shardings.values():
        for device, index in sharding.devices_indices_map(shape).items():
            rows.setdefault(device.process_index, set()).update(range(*index[0].indices(shape[0])))
    return rows


class TrainIterator:
    """Global batches (dicts of jax.Arrays) in the host-independent, resumable order.

    Each process builds the streams whose rows its devices hold -- taken from
    the sharding, not from ``jax.process_index()``, since a mesh may order
    hosts differently -- and reports the state of the streams it is the first
    holder of. ``step`` is the number of batches returned so far.
    """

    def __init__(self, config: DataConfig, mesh: jax.sharding.Mesh,
                 batch_sharding: ShardingArg = None, *, repeat: bool = True):
        stream_layout = streams.layout(config.num_streams, config.global_batch_size,
                                       jax.process_count())
        self._shardings = _shardings_by_key(mesh, batch_sharding)
        self._shape = (config.global_batch_size, config.seq_len)
        by_process = _rows_by_process(self._shardings, self._shape)
        per_stream = stream_layout.rows_per_stream
        holders = {k: sorted(p for p, rows in by_process.items()
                             if rows & set(stream_layout.stream_rows(k)))
                   for k in range(config.num_streams)}
        me = jax.process_index()
        ids = [k for k, procs in holders.items() if me in procs]
        self._writes = [k for k in ids if holders[k][0] == me]
        self._local_row = np.full(config.global_batch_size, -1)
        for i, k in enumerate(ids):
            self._local_row[stream_layout.stream_rows(k)] = np.arange(i * per_stream, (i + 1) * per_stream)
        self._doc_filter = DocumentFilter()
        self._config = config
        self._streams = stream_set(config, ids, repeat=repeat, doc_filter=self._doc_filter)

    @property
    def step(self) -> int:
        return self._streams.step

    @property
    def skipped_documents(self) -> int:
        """Empty or non-UTF-8 documents this process's streams have dropped (see DocumentFilter)."""
        return self._doc_filter.skipped

    def __iter__(self) -> "TrainIterator":
        return self

    def __next__(self) -> dict[str, jax.Array]:
        with naming_damaged_files(self._config):
            local = next(self._streams)
        return {k: jax.make_array_from_callback(self._shape, self._shardings[k],
                                                lambda index, v=v: self._device_rows(v, index))
                for k, v in local.items()}

    def _device_rows(self, local: np.ndarray, index: tuple) -> np.ndarray:
        rows = self._local_row[index[0]]
        if (rows < 0).any():
            raise RuntimeError("a device of this process needs batch rows of a stream this "
                               "process does not build; the batch sharding changed after the "
                               "iterator was made.")
        return local[rows][(slice(None),) + tuple(index[1:])]

    def state(self) -> dict:
        """The data order after ``step`` batches: every stream's position (gathered from
        all processes; a collective, so call it on every process at once)."""
        record = self._streams.state(self._writes)
        if jax.process_count() > 1:
            record["positions"] = _gather_positions(record["positions"], record["num_streams"])
        return record

    def restore_state(self, record: Mapping, where: str) -> None:
        """Continues from a ``state()`` record; errors name ``where`` (a checkpoint)."""
        self._streams.restore_state(record, where)

    def skip_to(self, step: int) -> None:
        """Replays to ``step`` without saved state (reads and packs every skipped row)."""
        with naming_damaged_files(self._config):
            self._streams.skip_to(step)


# --------------------------------------------------------------------------
# A truncated or corrupted input file: one line naming it, not a tf.data traceback.


def find_damaged_tfrecord(files: list[str], offset: Optional[int] = None) -> Optional[str]:
    """The first of ``files`` that tf.data cannot read to the end, else None.

    tf's DataLossError gives only the byte offset of the bad record, not the
    file, so the files are read again one by one (in TF's reader, no Python per
    record). The bad record starts at ``offset``, so files no longer than it
    are skipped unread.
    """
    for path in files:
        if offset is not None and tf.io.gfile.stat(path).length <= offset:
            continue
        try:
            tf.data.TFRecordDataset(path).reduce(np.int64(0), lambda count, _: count + 1)
        except tf.errors.DataLossError:
            return path
    return None


_BAD_RECORD = re.compile(r"(truncated|corrupted) record at (\d+)")


def _describe_data_loss(error: Exception) -> tuple[str, Optional[int]]:
    """(what tf found, the bad record's byte offset if it says) from a DataLossError."""
    text = str(error)
    found = _BAD_RECORD.search(text)
    if not found:
        return text.strip().splitlines()[0] if text.strip() else "unreadable", None
    what = f"{found.group(1)} record at byte {found.group(2)}"
    if "Is this even a TFRecord file?" in text:
        what += ", not a TFRecord file"
    return what, int(found.group(2))


def damaged_file_error(config: DataConfig, error: Exception) -> ValueError:
    """A one-line ValueError for tf's DataLossError while reading ``config``'s files."""
    what, offset = _describe_data_loss(error)
    binding = f"DataConfig.file_pattern={config.file_pattern!r}"
    if config.source != "files":
        return ValueError(f"the TFDS data of DataConfig.tfds_name={config.tfds_name!r} is "
                          f"damaged ({what}); prepare the dataset again.")
    files = tasks.resolve_files(config.file_pattern)
    # info, not warning: the error itself is the one line a user should see
    logging.info("a data file is damaged (%s); reading the %d files of %s to find it",
                 what, len(files), binding)
    path = find_damaged_tfrecord(files, offset)
    if path is None:
        return ValueError(f"a file of {binding} is damaged ({what}), but reading them again "
                          "found none (did they change?); check the files and run again.")
    return ValueError(f"data file {path!r} is damaged ({what}); copy or re-create it, or "
                      f"leave it out of {binding}.")


@contextlib.contextmanager
def naming_damaged_files(config: DataConfig):
    """Turns tf.data's DataLossError (a truncated or corrupted TFRecord) into a ValueError
    naming the file and the fix, which the command line prints as one line."""
    try:
        yield
    except tf.errors.DataLossError as e:
        raise damaged_file_error(config, e) from e


_POSITION_FIELDS = [f.name for f in dataclasses.fields(streams.StreamPosition)]


def _gather_positions(local: Mapping[str, Mapping], num_streams: int) -> dict[str, dict]:
    """Every process's stream positions, merged (each stream is written by one process)."""
    table = np.full((num_streams, len(_POSITION_FIELDS) + 1), -1, np.int64)
    for k, position in local.items():
        table[int(k)] = [1] + [position[f] for f in _POSITION_FIELDS]
    gathered = np.asarray(multihost_utils.process_allgather(table))  # [P, K, F + 1]
    merged = {}
    for k in range(num_streams):
        row = gathered[:, k][gathered[:, k, 0] == 1]
        if len(row):
            merged[str(k)] = dict(zip(_POSITION_FIELDS, map(int, row[0, 1:])))
    return merged


def make_train_iterator(config: DataConfig, mesh: jax.sharding.Mesh,
                        batch_sharding: ShardingArg = None, *, start_step: int = 0,
                        saved_state: Optional[Mapping] = None, where: str = "the checkpoint",
                        repeat: bool = True) -> TrainIterator:
    """The trainer's batches, continuing at ``start_step``.

    ``saved_state`` is the ``TrainIterator.state()`` record saved with the checkpoint of
    ``start_step``; without one (a checkpoint from before data states were saved) it logs
    a warning and replays the ``start_step`` batches -- exact, but it reads and packs all.
    """
    iterator = TrainIterator(config, mesh, batch_sharding, repeat=repeat)
    if start_step > 0:
        if saved_state is not None:
            if int(saved_state["step"]) != start_step:
                raise ValueError(f"{where} holds the data order of step {saved_state['step']}, "
                                 f"not of step {start_step}.")
            iterator.restore_state(saved_state, where)
        else:
            logging.warning("no saved data order in %s; replaying %d batches", where, start_step)
            iterator.skip_to(start_step)
    return iterator


def global_batches(
    config: DataConfig, mesh: jax.sharding.Mesh, batch_sharding: ShardingArg = None, *, repeat: bool = True
) -> Iterator[dict[str, jax.Array]]:
    """Global batches as jax.Arrays in the stream order (``make_train_iterator``).

    ``batch_sharding`` (one Sharding for all keys, or one per key) defaults to
    the batch axis split across all axes of ``mesh``. With ``repeat=False``
    each process stops when its own streams end (finished streams give
    all-padding rows until then).
    """
    return make_train_iterator(config, mesh, batch_sharding, repeat=repeat)




__all__ = ["TrainIterator", "batch_spec", "global_batches", "make_train_iterator"]
