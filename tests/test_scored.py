"""The scored-data format (slm_jax/data/scored.py): what one host writes, any host layout
reads back, row by row and from any step."""

import json

import jax
import numpy as np
import pytest

from slm_jax.data import BATCH_KEYS, scored
from slm_jax.data.pipeline import DataConfig
from slm_jax.parallel.runtime import Runtime

B, T = 8, 16


def batch_at(step):
    rng = np.random.default_rng(step)
    batch = {k: rng.integers(0, 100, (B, T)).astype(np.int32) for k in BATCH_KEYS}
    batch["loss_weights"] = (rng.random((B, T)) > 0.2).astype(np.float32)
    return batch


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("scored"))
    runtime = Runtime.from_config()
    writer = scored.ScoredWriter(out, batches_per_shard=2, loss_dtype=np.float32)
    for step in range(5):
        host = batch_at(step)
        device = jax.device_put(host, runtime.batch_sharding())
        ref_loss = jax.device_put(host["inputs"].astype(np.float32) / 7, runtime.batch_sharding())
        writer.add(device, ref_loss)
    writer.close(global_batch_size=B, seq_len=T, info={"reference_checkpoint": "/r"})
    return out, writer


def test_index_and_shards(written):
    out, writer = written
    index = json.load(open(f"{out}/index.json"))
    assert index == {"global_batch_size": B, "seq_len": T, "num_batches": 5,
                     "batches_per_shard": 2, "num_writers": 1, "loss_dtype": "float32",
                     "reference_checkpoint": "/r"}
    assert writer.num_tokens == int(sum(batch_at(s)["loss_weights"].sum() for s in range(5)))


def test_rows_read_back_exactly_and_wrap_around(written):
    reader = scored.ScoredReader(written[0])
    rows = reader.rows(3 * B + 2, 4)           # batch 3, rows 2..5
    want = batch_at(3)
    for k in BATCH_KEYS:
        np.testing.assert_array_equal(rows[k], want[k][2:6].astype(rows[k].dtype))
    np.testing.assert_allclose(rows["ref_loss"], want["inputs"][2:6] / 7, rtol=1e-6)
    np.testing.assert_array_equal(reader.rows(5 * B, 1)["inputs"], batch_at(0)["inputs"][:1])


def test_batches_resume_at_any_step_on_the_mesh(written):
    runtime = Runtime.from_config()
    data = DataConfig(file_pattern="unused", vocab_path="unused", seq_len=T, global_batch_size=B)
    batches = scored.scored_batches(written[0], data, runtime.mesh, runtime.batch_sharding(),
                                    start_step=4)
    batch = next(batches)
    assert batch["inputs"].sharding == runtime.batch_sharding()
    np.testing.assert_array_equal(np.asarray(batch["targets"]), batch_at(4)["targets"])
    np.testing.assert_array_equal(np.asarray(next(batches)["targets"]), batch_at(0)["targets"])


def test_other_seq_len_and_missing_index_are_clear_errors(written, tmp_path):
    runtime = Runtime.from_config()
    data = DataConfig(file_pattern="x", vocab_path="y", seq_len=2 * T, global_batch_size=B)
    with pytest.raises(ValueError, match=r"scored_dir=.* was scored at seq_len 16, but "
                                         r"DataConfig.seq_len=32"):
        next(scored.scored_batches(written[0], data, runtime.mesh, runtime.batch_sharding()))
    with pytest.raises(ValueError, match="scored_dir=.* has no index.json; run the `score` job "
                                         "first"):
        scored.ScoredReader(str(tmp_path))
    # The caller names where the directory came from (the train job: its own binding).
    with pytest.raises(ValueError, match=r"^train.scored_data=.* has no index.json"):
        next(scored.scored_batches(str(tmp_path), data, runtime.mesh, runtime.batch_sharding(),
                                   binding="train.scored_data"))


def test_a_shard_that_meets_a_full_disk_leaves_nothing_behind(tmp_path, monkeypatch):
    import errno

    import tensorflow as tf

    from slm_jax import disk

    class FullDisk:
        def __init__(self, path, mode):
            self.path = path

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, data):   # half a shard lands, then the disk is full
            with open(self.path, "wb") as f:
                f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tf.io.gfile, "GFile", FullDisk)
    with pytest.raises(disk.DiskFullError, match=r"no space left in .* for the scored shard "
                                                 r"w000-00003.npz \(it needs ~.* MB"):
        scored.write_npz(str(tmp_path / "w000-00003.npz"), {"x": np.zeros(1000)})
    assert list(tmp_path.iterdir()) == []
