"""Train-state shardings and the jitted step (slm_jax/parallel/partition.py)."""

import jax
import jax.numpy as jnp
import numpy as np

from slm_jax import model as model_lib
from slm_jax.data import BATCH_KEYS
from slm_jax.parallel import partition, sharding
from slm_jax.slm.optim import OptimizerConfig, make_optimizer
from slm_jax.slm.selection import SelectionConfig
from slm_jax.slm.train_step import make_train_step

TINY = model_lib.ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2,
                             mlp_dim=64, max_seq_len=16, dtype="float32")


def test_optimizer_moments_mirror_the_params_shardings():
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=4))
    tx, _ = make_optimizer(OptimizerConfig(), 10)
    state_sh = partition.state_shardings(TINY, tx, mesh)
    params_sh = sharding.param_shardings(TINY, mesh)
    adam = state_sh.opt_state[1][0]
    assert jax.tree.leaves(adam.mu) == jax.tree.leaves(params_sh)
    assert jax.tree.leaves(adam.nu) == jax.tree.leaves(params_sh)
    assert state_sh.step.spec == jax.sharding.PartitionSpec()
    state = partition.init_state(TINY, tx, jax.random.key(0), state_sh)
    assert all(x.sharding == s for x, s in zip(jax.tree.leaves(state), jax.tree.leaves(state_sh)))


def test_jitted_step_keeps_shardings_and_donates_the_old_state():
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=4))
    tx, schedule = make_optimizer(OptimizerConfig(learning_rate=1e-2), 10)
    state_sh = partition.state_shardings(TINY, tx, mesh)
    step = partition.jit_train_step(make_train_step(TINY, SelectionConfig(), tx, schedule),
                                    state_sh, None, mesh)
    rng = np.random.default_rng(0)
    batch = {k: rng.integers(1, 64, (8, 16)).astype(np.int32) for k in ("inputs", "targets")}
    batch.update(segment_ids=np.ones((8, 16), np.int32),
                 positions=np.tile(np.arange(16, dtype=np.int32), (8, 1)),
                 loss_weights=np.ones((8, 16), np.float32))
    batch = jax.device_put(batch, partition.batch_shardings(mesh, BATCH_KEYS))
    state = partition.init_state(TINY, tx, jax.random.key(0), state_sh)
    old_leaf = jax.tree.leaves(state.params)[0]
    with sharding.activation_sharding(mesh):
        new_state, metrics = step(state, None, batch)
    assert old_leaf.is_deleted()
    assert int(new_state.step) == 1 and np.isfinite(float(metrics["loss"]))
    assert all(x.sharding == s for x, s in zip(jax.tree.leaves(new_state),
                                               jax.tree.leaves(state_sh)))
    assert metrics["loss"].sharding.is_fully_replicated
    assert jnp.dtype(metrics["loss"].dtype) == jnp.float32
