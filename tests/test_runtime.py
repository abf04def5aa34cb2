"""The one setup path of every job (slm_jax/parallel/runtime.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax import model as model_lib
from slm_jax.parallel import partition, sharding
from slm_jax.parallel.checkpoint import Checkpointer
from slm_jax.parallel.runtime import Runtime
from slm_jax.slm.optim import OptimizerConfig, make_optimizer
from slm_jax.slm.train_step import make_eval_step

TINY = model_lib.ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2,
                             mlp_dim=64, max_seq_len=16, dtype="float32")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A checkpoint of TINY written from a 2x4 mesh."""
    path = tmp_path_factory.mktemp("runtime") / "checkpoints"
    runtime = Runtime.from_config(sharding.MeshConfig(data=2, fsdp=4))
    tx, _ = make_optimizer(OptimizerConfig(), 1)
    state = partition.init_state(TINY, tx, jax.random.key(1), runtime.state_shardings(TINY, tx))
    checkpointer = Checkpointer(str(path))
    checkpointer.save(state, force=True)
    checkpointer.close()
    return str(path), jax.device_get(state.params)


def test_from_config_builds_the_mesh_and_rules():
    runtime = Runtime.from_config(sharding.MeshConfig(data=2, fsdp=4))
    assert dict(runtime.mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    assert runtime.data_parallel_size == 8 and runtime.rules == sharding.DEFAULT_RULES
    with runtime.activate() as active:
        assert active is runtime and not jax.sharding.get_abstract_mesh().empty
    assert jax.sharding.get_abstract_mesh().empty


def test_restore_params_into_another_layout_and_dtype(saved):
    path, want = saved
    runtime = Runtime.from_config(sharding.MeshConfig(data=1, fsdp=8))
    params = runtime.restore_params(path, TINY, binding="x.checkpoint", dtype="bfloat16")
    for got, expected, sh in zip(jax.tree.leaves(params), jax.tree.leaves(want),
                                 jax.tree.leaves(runtime.param_shardings(TINY))):
        assert got.dtype == jnp.bfloat16 and got.sharding == sh
        np.testing.assert_array_equal(np.asarray(got), expected.astype(jnp.bfloat16))
    with pytest.raises(ValueError, match="x.checkpoint=.*does not exist"):
        runtime.restore_params(path + "-nope", TINY, binding="x.checkpoint")


def test_jit_eval_runs_sharded_like_training(saved):
    path, want = saved
    runtime = Runtime.from_config()
    with runtime.activate():
        params = runtime.restore_params(path, TINY, binding="x")
        eval_fn = runtime.jit_eval(make_eval_step(TINY), TINY)
        batch = {"inputs": np.ones((8, 16), np.int32), "targets": np.full((8, 16), 2, np.int32),
                 "segment_ids": np.ones((8, 16), np.int32),
                 "positions": np.tile(np.arange(16, dtype=np.int32), (8, 1)),
                 "loss_weights": np.ones((8, 16), np.float32)}
        loss_sum, weights = eval_fn(params, batch)
    assert float(weights) == 128.0
    logits = model_lib.logits(want, TINY, batch["inputs"][:1])
    want_loss = -jax.nn.log_softmax(logits)[..., 2].mean()
    np.testing.assert_allclose(float(loss_sum) / 128.0, float(want_loss), rtol=1e-5)
