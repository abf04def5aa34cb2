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
from tests.test_train_step import TINY, assert_trees_close, make_batch  # noqa: F401  (shared fixtures and helpers)

BATCH, LENGTH = 8, 16


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


def _truncate_largest_file(step_dir):
    files = sorted((p for p in (step_dir / "params").rglob("*") if p.is_file()),
                   key=lambda p: p.stat().st_size)
    with open(files[-1], "r+b") as f:
        f.truncate(64)


def test_an_unreadable_checkpoint_falls_back_to_the_previous_one_and_is_kept_aside(tmp_path):
    mesh = sharding.make_mesh(sharding.MeshConfig())
    tx, _ = make_optimizer(OptimizerConfig(), 10)
    state_sh = partition.state_shardings(TINY, tx, mesh)
    state = partition.init_state(TINY, tx, jax.random.key(0), state_sh)
    directory = tmp_path / "ckpt"
    with ckpt_lib.Checkpointer(str(directory), ckpt_lib.CheckpointConfig(keep=5)) as ckpt:
        for step in (1, 2):
            ckpt.save(state.replace(step=jax.numpy.int32(step)), force=True,
                      data_state={"step": step})
    _truncate_largest_file(directory / "2")
    abstract = partition.abstract_train_state(TINY, tx)
    with ckpt_lib.Checkpointer(str(directory)) as ckpt:
        restored = ckpt.restore_latest_readable(abstract, state_sh)
        assert int(restored.step) == 1 and ckpt.latest_step() == 1
        assert ckpt.restore_data_state(1) == {"step": 1}
    assert (directory / "2.unreadable").is_dir() and not (directory / "2").exists()
    _truncate_largest_file(directory / "1")
    with ckpt_lib.Checkpointer(str(directory)) as ckpt:
        with pytest.raises(ValueError, match=r"the checkpoint .*/ckpt/1 cannot be read \(.*\) and "
                                             r"no older one is left"):
            ckpt.restore_latest_readable(abstract, state_sh)
