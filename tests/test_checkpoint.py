"""Orbax checkpoints (slm_jax/parallel/checkpoint.py): restore gives the identical next step; reference params read-only, other shapes refused."""


import jax
import numpy as np
import pytest

from slm_jax.parallel import checkpoint as ckpt_lib
from slm_jax import model as model_lib
from slm_jax.parallel import partition, sharding
from slm_jax.slm.optim import OptimizerConfig, make_optimizer
from slm_jax.slm.selection import SelectionConfig
from slm_jax.slm.train_step import make_train_step

TINY = model_lib.ModelConfig(vocab_size=128, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                             mlp_dim=64, max_seq_len=64, dtype="float32")
BATCH, LENGTH = 8, 16


def make_batch(seed=0, batch=BATCH, length=LENGTH):
    """Two packed documents per row plus a padded tail, as the pipeline yields."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, TINY.vocab_size, size=(batch, length + 1)).astype(np.int32)
    segments = np.zeros((batch, length + 1), np.int32)
    positions = np.zeros((batch, length + 1), np.int32)
    for row in range(batch):
        cut, end = rng.integers(3, length - 4), rng.integers(length - 2, length + 1)
        segments[row, :cut], segments[row, cut:end] = 1, 2
        positions[row, :cut] = np.arange(cut)
        positions[row, cut:end] = np.arange(end - cut)
    tokens[segments == 0] = 0
    weights = ((segments[:, 1:] == segments[:, :-1]) & (segments[:, 1:] > 0)).astype(np.float32)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_weights": weights,
            "segment_ids": segments[:, :-1], "positions": positions[:, :-1]}


def assert_trees_close(a, b, **tol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)


def test_checkpoint_restore_gives_identical_next_step(tmp_path):
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=4))
    tx, schedule = make_optimizer(OptimizerConfig(learning_rate=1e-2), 10)
    state_sh = partition.state_shardings(TINY, tx, mesh)
    step = partition.jit_train_step(make_train_step(TINY, SelectionConfig(), tx, schedule),
                                    state_sh, None, mesh)
    with sharding.activation_sharding(mesh):
        state = partition.init_state(TINY, tx, jax.random.key(0), state_sh)
        state, _ = step(state, None, make_batch(0))
        ckpt = ckpt_lib.Checkpointer(str(tmp_path / "ckpt"), ckpt_lib.CheckpointConfig(every_steps=1))
        ckpt.save(state)
        ckpt.close()
        continued, m_cont = step(state, None, make_batch(1))
        restored = ckpt_lib.Checkpointer(str(tmp_path / "ckpt")).restore(
            partition.abstract_train_state(TINY, tx), state_sh)
        assert int(restored.step) == 1
        assert restored.params["embed"]["embedding"].sharding == state_sh.params["embed"]["embedding"]
        resumed, m_res = step(restored, None, make_batch(1))
    assert float(m_cont["loss"]) == float(m_res["loss"])
    for x, y in zip(jax.tree.leaves(continued), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_reference_params_restore_read_only_and_reject_other_shapes(tmp_path):
    mesh = sharding.make_mesh(sharding.MeshConfig())
    tx, _ = make_optimizer(OptimizerConfig(), 10)
    state_sh = partition.state_shardings(TINY, tx, mesh)
    with sharding.activation_sharding(mesh):
        state = partition.init_state(TINY, tx, jax.random.key(1), state_sh)
    ckpt = ckpt_lib.Checkpointer(str(tmp_path / "ref"))
    ckpt.save(state, force=True)
    ckpt.close()
    params = ckpt_lib.restore_params(str(tmp_path / "ref"), model_lib.abstract_params(TINY),
                                     state_sh.params, binding="ReferenceConfig.checkpoint")
    assert_trees_close(params, state.params, rtol=0, atol=0)
    bigger = model_lib.ModelConfig(**{**TINY.__dict__, "d_model": 64})
    with pytest.raises(ValueError, match="ReferenceConfig.checkpoint=.*does not match"):
        ckpt_lib.restore_params(str(tmp_path / "ref"), model_lib.abstract_params(bigger),
                                sharding.param_shardings(bigger, mesh),
                                binding="ReferenceConfig.checkpoint")
    with pytest.raises(ValueError, match="ReferenceConfig.checkpoint=.*does not exist"):
        ckpt_lib.restore_params(str(tmp_path / "missing"), model_lib.abstract_params(TINY),
                                state_sh.params, binding="ReferenceConfig.checkpoint")
