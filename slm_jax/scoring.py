"""Step 2 of SLM as its own job: score a corpus once with the reference model.

`score` runs the frozen reference over the packed training stream and writes,
per packed sequence, the tokens and the reference's per-token loss. A `train`
run with `SelectionConfig.mode = 'slm_offline'` and `train.scored_data`
pointing here reads them back and skips the reference forward entirely, so an
ablation over the selection ratio costs one scoring pass, not one reference
forward per run.

Layout of `out_dir` (local or gs://):
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
import time

import gin
import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from slm_jax import checkpoint as ckpt_lib
from slm_jax import model as model_lib
from slm_jax import partition, sharding
from slm_jax.data import pipeline
from slm_jax.train_step import make_score_step

SCORED_KEYS = partition.BATCH_KEYS + ("ref_loss",)
_DTYPES = {"inputs": np.int32, "targets": np.int32, "segment_ids": np.int32,
           "positions": np.int32, "loss_weights": np.uint8}


def _shard_path(out_dir, writer, shard):
    return os.path.join(out_dir, f"w{writer:03d}-{shard:05d}.npz")


def _write_npz(path, arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(buf.getvalue())


def _read_npz(path):
    with tf.io.gfile.GFile(path, "rb") as f:
        with np.load(io.BytesIO(f.read())) as z:
            return {k: z[k] for k in z.files}


def _local_rows(array: jax.Array) -> np.ndarray:
    """This host's rows of a batch-sharded global array, in global row order."""
    shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
    seen, rows = set(), []
    for s in shards:
        start = s.index[0].start or 0
        if start not in seen:  # replicas along non-batch mesh axes hold the same rows
            seen.add(start)
            rows.append(np.asarray(s.data))
    return np.concatenate(rows)


@gin.configurable
def score(out_dir: str = gin.REQUIRED, *,
          reference_checkpoint: str = gin.REQUIRED,
          data: pipeline.DataConfig | None = None,
          reference_model: model_lib.ModelConfig | None = None,
          mesh: sharding.MeshConfig | None = None,
          num_batches: int | None = None,
          batches_per_shard: int = 64,
          loss_dtype: str = "float32",
          reference_dtype: str = "bfloat16",
          loss_chunk_size: int = 1024) -> dict:
    """Scores `num_batches` global batches (default: one pass over the data).

    Args:
      out_dir: where the scored shards go (local path or gs://).
      reference_checkpoint: checkpoints/ of the reference `train` run.
      loss_dtype: storage dtype of the reference loss. float32 keeps the
        selection identical to online SLM; bfloat16/float16 halve the size
        and may flip near-ties.
    Returns {"tokens": scored tokens, "tokens_per_s": throughput, "batches": n}.
    """
    data = data or pipeline.DataConfig()
    model = reference_model or model_lib.ModelConfig()
    forward = model_lib.computing_in(model, reference_dtype, "score.reference_dtype")
    mesh_config = mesh or sharding.MeshConfig()
    dev_mesh = sharding.make_mesh(mesh_config)
    if data.seq_len > model.max_seq_len:
        raise ValueError(f"DataConfig.seq_len={data.seq_len} is longer than ModelConfig."
                         f"max_seq_len={model.max_seq_len}; lower --gin.DataConfig.seq_len.")
    if data.global_batch_size % sharding.data_parallel_size(dev_mesh):
        raise ValueError(f"DataConfig.global_batch_size={data.global_batch_size} is not divisible "
                         f"by the data-parallel size {sharding.data_parallel_size(dev_mesh)}.")
    store_dtype = np.dtype(jnp.dtype(loss_dtype))
    tf.io.gfile.makedirs(out_dir)
    param_sh = partition.param_shardings(model, dev_mesh, mesh_config.rules)
    with sharding.activation_sharding(dev_mesh, mesh_config.rules):
        params = ckpt_lib.restore_params(reference_checkpoint, model_lib.abstract_params(model),
                                         param_sh, binding="score.reference_checkpoint")
        cast = jnp.dtype(reference_dtype)
        params = jax.jit(lambda p: jax.tree.map(lambda x: x.astype(cast), p),
                         out_shardings=param_sh)(params)
        score_fn = partition.jit_eval_step(make_score_step(forward, loss_chunk_size), param_sh,
                                           dev_mesh, out_sharding=sharding.batch_sharding(dev_mesh))
        batches = pipeline.global_batches(data, dev_mesh, sharding.batch_sharding(dev_mesh),
                                          repeat=num_batches is not None)
        if num_batches is not None:
            batches = itertools.islice(batches, num_batches)
        writer = jax.process_index()
        pending, shard, n_batches, n_tokens = [], 0, 0, 0
        start = time.perf_counter()
        for batch in batches:
            ref_loss = score_fn(params, batch)
            rows = {k: _local_rows(batch[k]).astype(_DTYPES[k]) for k in partition.BATCH_KEYS}
            rows["ref_loss"] = _local_rows(ref_loss).astype(store_dtype)
            n_tokens += int(rows["loss_weights"].sum())
            pending.append(rows)
            n_batches += 1
            if len(pending) == batches_per_shard:
                _write_npz(_shard_path(out_dir, writer, shard),
                           {k: np.concatenate([p[k] for p in pending]) for k in SCORED_KEYS})
                pending, shard = [], shard + 1
        if pending:
            _write_npz(_shard_path(out_dir, writer, shard),
                       {k: np.concatenate([p[k] for p in pending]) for k in SCORED_KEYS})
        elapsed = time.perf_counter() - start
    if n_batches == 0:
        raise ValueError(f"DataConfig.file_pattern={data.file_pattern!r} gave no batches to score.")
    # Local token counts; with several hosts each reports its own share.
    result = {"batches": n_batches, "tokens": n_tokens, "tokens_per_s": n_tokens / elapsed}
    if jax.process_index() == 0:
        index = {"global_batch_size": data.global_batch_size, "seq_len": data.seq_len,
                 "num_batches": n_batches, "batches_per_shard": batches_per_shard,
                 "num_writers": jax.process_count(), "loss_dtype": str(store_dtype),
                 "reference_checkpoint": os.path.abspath(reference_checkpoint)
                 if "://" not in reference_checkpoint else reference_checkpoint}
        with tf.io.gfile.GFile(os.path.join(out_dir, "index.json"), "w") as f:
            f.write(json.dumps(index, indent=1))
        print(f"[score] {n_batches} batches, {n_tokens:,} tokens on this host, "
              f"{result['tokens_per_s']:,.0f} tokens/s -> {out_dir}")
    return result


class ScoredReader:
    """Random access to the scored rows, global row r = batch r // B, row r % B."""

    def __init__(self, scored_dir: str):
        index_path = os.path.join(scored_dir, "index.json")
        if not tf.io.gfile.exists(index_path):
            raise ValueError(f"train.scored_data={scored_dir!r} has no index.json; run the "
                             "`score` job first (--gin.run.job=score --gin.score.out_dir=...).")
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
            cached = (shard, _read_npz(_shard_path(self.dir, writer, shard)))
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


def scored_batches(scored_dir: str, data: pipeline.DataConfig, mesh, batch_sharding,
                   start_step: int = 0):
    """Global batches of `data.global_batch_size` rows from the scored stream.

    Step s holds global rows [s*B, (s+1)*B); each host reads only its rows.
    Seekable: `start_step` resumes exactly where a run stopped.
    """
    reader = ScoredReader(scored_dir)
    if reader.index["seq_len"] != data.seq_len:
        raise ValueError(f"train.scored_data={scored_dir!r} was scored at seq_len "
                         f"{reader.index['seq_len']}, but DataConfig.seq_len={data.seq_len}; "
                         "score again or set --gin.DataConfig.seq_len to match.")
    B = data.global_batch_size
    hosts = jax.process_count()
    if B % hosts:
        raise ValueError(f"DataConfig.global_batch_size={B} is not divisible by {hosts} hosts.")
    local = B // hosts
    for step in itertools.count(start_step):
        rows = reader.rows(step * B + jax.process_index() * local, local)
        yield {k: jax.make_array_from_process_local_data(batch_sharding, v)
               for k, v in rows.items()}
