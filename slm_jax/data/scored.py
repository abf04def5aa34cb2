"""The scored-data format of SLM step 2: packed rows plus the reference's per-token loss.

The `score` job (slm_jax/jobs/score.py) writes it; a `train` run with
`SelectionConfig.mode = 'slm_offline'` reads it back (its `scored_data` argument).

Layout of a scored directory (local or gs://):
    index.json            global batch size, sequence length, batches, writers
    w{P}-{K}.npz          writer process P's rows of global batches
                          [K*batches_per_shard, (K+1)*batches_per_shard)
Every host reads exactly the rows of each global batch it holds, whatever
the number of hosts that wrote the files.
"""

from __future__ import annotations

import io
import itertools
import json
import os

import jax
import numpy as np
import tensorflow as tf

from slm_jax import disk
from slm_jax.data import BATCH_KEYS

SCORED_KEYS = BATCH_KEYS + ("ref_loss",)
_DTYPES = {"inputs": np.int32, "targets": np.int32, "segment_ids": np.int32,
           "positions": np.int32, "loss_weights": np.uint8}


def _shard_path(out_dir, writer, shard):
    return os.path.join(out_dir, f"w{writer:03d}-{shard:05d}.npz")


def write_npz(path, arrays):
    """Written whole or not at all: a full disk leaves no truncated shard behind."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    partial = path + ".partial"
    try:
        with disk.writing(os.path.dirname(path), f"the scored shard {os.path.basename(path)}",
                          needed=buf.getbuffer().nbytes,
                          intact="the shards before it are intact"):
            with tf.io.gfile.GFile(partial, "wb") as f:
                f.write(buf.getvalue())
            tf.io.gfile.rename(partial, path, overwrite=True)
    except Exception:
        if tf.io.gfile.exists(partial):
            tf.io.gfile.remove(partial)
        raise


def read_npz(path):
    with tf.io.gfile.GFile(path, "rb") as f:
        with np.load(io.BytesIO(f.read())) as z:
            return {k: z[k] for k in z.files}


def local_rows(array: jax.Array) -> np.ndarray:
    """This host's rows of a batch-sharded global array, in global row order."""
    shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
    seen, rows = set(), []
    for s in shards:
        start = s.index[0].start or 0
        if start not in seen:  # replicas along non-batch mesh axes hold the same rows
            seen.add(start)
            rows.append(np.asarray(s.data))
    return np.concatenate(rows)


class ScoredWriter:
    """Buffers this host's rows of each scored batch and writes a shard every
    `batches_per_shard` batches; `close` writes the rest and (process 0) index.json."""

    def __init__(self, out_dir: str, *, batches_per_shard: int, loss_dtype):
        tf.io.gfile.makedirs(out_dir)
        self.out_dir, self.batches_per_shard = out_dir, batches_per_shard
        self.loss_dtype = np.dtype(loss_dtype)
        self.num_batches, self.num_tokens = 0, 0
        self._pending, self._shard = [], 0

    def add(self, batch: dict, ref_loss: jax.Array) -> None:
        rows = {k: local_rows(batch[k]).astype(_DTYPES[k]) for k in BATCH_KEYS}
        rows["ref_loss"] = local_rows(ref_loss).astype(self.loss_dtype)
        self.num_tokens += int(rows["loss_weights"].sum())
        self._pending.append(rows)
        self.num_batches += 1
        if len(self._pending) == self.batches_per_shard:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            write_npz(_shard_path(self.out_dir, jax.process_index(), self._shard),
                       {k: np.concatenate([p[k] for p in self._pending]) for k in SCORED_KEYS})
            self._pending, self._shard = [], self._shard + 1

    def close(self, *, global_batch_size: int, seq_len: int, info: dict) -> None:
        self._flush()
        if jax.process_index() == 0:
            index = {"global_batch_size": global_batch_size, "seq_len": seq_len,
                     "num_batches": self.num_batches, "batches_per_shard": self.batches_per_shard,
                     "num_writers": jax.process_count(), "loss_dtype": str(self.loss_dtype),
                     **info}
            with tf.io.gfile.GFile(os.path.join(self.out_dir, "index.json"), "w") as f:
                f.write(json.dumps(index, indent=1))


class ScoredReader:
    """Random access to the scored rows, global row r = batch r // B, row r % B."""

    def __init__(self, scored_dir: str, binding: str = "scored_dir"):
        index_path = os.path.join(scored_dir, "index.json")
        if not tf.io.gfile.exists(index_path):
            raise ValueError(f"{binding}={scored_dir!r} has no index.json; run the `score` job "
                             "first, with this directory as its out_dir.")
        with tf.io.gfile.GFile(index_path) as f:
            self.index = json.load(f)
        self.dir = scored_dir
        self.batch = self.index["global_batch_size"]
        self.rows_per_writer = self.batch // self.index["num_writers"]
        self.num_rows = self.index["num_batches"] * self.batch
        self._cache: dict[int, tuple[int, dict]] = {}

    def _shard(self, writer, shard):
        cached = self._cache.get(writer)
        if cached is None or cached[0] != shard:
            cached = (shard, read_npz(_shard_path(self.dir, writer, shard)))
            self._cache[writer] = cached
        return cached[1]

    def rows(self, first: int, count: int) -> dict[str, np.ndarray]:
        """Rows [first, first + count) of the stream, wrapping around (epochs)."""
        out = {k: [] for k in SCORED_KEYS}
        for r in range(first, first + count):
            b, j = divmod(r % self.num_rows, self.batch)
            writer, local = divmod(j, self.rows_per_writer)
            shard, in_shard = divmod(b, self.index["batches_per_shard"])
            arrays = self._shard(writer, shard)
            row = in_shard * self.rows_per_writer + local
            for k in SCORED_KEYS:
                out[k].append(arrays[k][row])
        batch = {k: np.stack(v) for k, v in out.items()}
        batch["loss_weights"] = batch["loss_weights"].astype(np.float32)
        batch["ref_loss"] = batch["ref_loss"].astype(np.float32)
        return batch


def scored_batches(scored_dir: str, data, mesh, batch_sharding,
                   start_step: int = 0, binding: str = "scored_dir"):
    """Global batches of `data.global_batch_size` rows from the scored stream.

    Step s holds global rows [s*B, (s+1)*B); each host reads only its rows.
    Seekable: `start_step` resumes exactly where a run stopped. `binding` names where
    `scored_dir` came from (the caller's gin binding), for the error messages.
    """
    reader = ScoredReader(scored_dir, binding)
    if reader.index["seq_len"] != data.seq_len:
        raise ValueError(f"{binding}={scored_dir!r} was scored at seq_len "
                         f"{reader.index['seq_len']}, but DataConfig.seq_len={data.seq_len}; "
                         "score again or set DataConfig.seq_len to match.")
    B = data.global_batch_size
    hosts = jax.process_count()
    if B % hosts:
        raise ValueError(f"DataConfig.global_batch_size={B} is not divisible by {hosts} hosts.")
    local = B // hosts
    for step in itertools.count(start_step):
        rows = reader.rows(step * B + jax.process_index() * local, local)
        yield {k: jax.make_array_from_process_local_data(batch_sharding, v)
               for k, v in rows.items()}
