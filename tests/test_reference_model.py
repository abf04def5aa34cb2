"""The one way every job gets a reference (slm_jax/trainer/reference_model.py): from a
checkpoint or a random init, in its forward dtype, of its own size, and its per-token losses."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax import model as model_lib
from slm_jax.parallel import partition
from slm_jax.parallel.checkpoint import Checkpointer
from slm_jax.parallel.runtime import Runtime
from slm_jax.slm.optim import OptimizerConfig, make_optimizer
from slm_jax.slm.reference import ReferenceConfig
from slm_jax.slm.train_step import make_loss_fn
from slm_jax.trainer.reference_model import load_reference

TINY = model_lib.ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2,
                             mlp_dim=64, max_seq_len=32, dtype="float32")
# A reference of another size than the student (a small reference for a big student).
OTHER = dataclasses.replace(TINY, d_model=16, n_heads=2, n_kv_heads=1, mlp_dim=32, n_layers=2)


def save_init_checkpoint(model, directory: str, seed: int = 3):
    """A checkpoints/ directory holding a fresh init of `model` (a reference of any size,
    without training one); returns its params on host."""
    runtime = Runtime.from_config()
    tx, _ = make_optimizer(OptimizerConfig(), 1)
    state = partition.init_state(model, tx, jax.random.key(seed), runtime.state_shardings(model, tx))
    with Checkpointer(directory) as checkpointer:
        checkpointer.save(state, force=True)
    return jax.device_get(state.params)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """checkpoints/ of a run of OTHER, and its params on host."""
    path = str(tmp_path_factory.mktemp("reference") / "checkpoints")
    return path, save_init_checkpoint(OTHER, path)


def _batch():
    rng = np.random.default_rng(0)
    return {"inputs": rng.integers(0, 64, (8, 16)).astype(np.int32),
            "targets": rng.integers(0, 64, (8, 16)).astype(np.int32),
            "segment_ids": np.ones((8, 16), np.int32),
            "positions": np.tile(np.arange(16, dtype=np.int32), (8, 1)),
            "loss_weights": (rng.random((8, 16)) > 0.2).astype(np.float32)}


def test_a_missing_checkpoint_is_a_clear_error():
    with pytest.raises(ValueError, match="set ReferenceConfig.checkpoint"):
        load_reference(ReferenceConfig(), TINY, Runtime.from_config())


def test_restores_a_reference_of_its_own_size_sharded_in_the_reference_dtype(saved):
    path, params = saved
    runtime = Runtime.from_config()
    with runtime.activate():
        ref = load_reference(ReferenceConfig(checkpoint=path, dtype="bfloat16", model=OTHER),
                             TINY, runtime)
    assert ref.forward == dataclasses.replace(OTHER, dtype="bfloat16") and ref.source == path
    for got, want, sh in zip(jax.tree.leaves(ref.params), jax.tree.leaves(params),
                             jax.tree.leaves(runtime.param_shardings(OTHER))):
        assert got.dtype == jnp.bfloat16 and got.sharding == sh
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want.astype(jnp.bfloat16)))


def test_per_token_losses_are_the_references_own_masked_by_weight(saved):
    """analyze's request: fp32 whatever ReferenceConfig.dtype says."""
    path, params = saved
    runtime = Runtime.from_config()
    batch = _batch()
    with runtime.activate():
        ref = load_reference(ReferenceConfig(checkpoint=path, dtype="bfloat16", model=OTHER),
                             TINY, runtime, dtype="float32")
        got = np.asarray(ref.per_token_losses(runtime)(batch))
    assert ref.forward.dtype == "float32"
    want = np.asarray(make_loss_fn(OTHER)(params, batch)) * (batch["loss_weights"] > 0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert (got[batch["loss_weights"] == 0] == 0).all() and got.max() > 1.0


def test_a_random_reference_for_the_bench_is_seeded_and_cast():
    runtime = Runtime.from_config()
    config = ReferenceConfig(dtype="bfloat16", model=OTHER)
    one = load_reference(config, TINY, runtime, init_seed=1)
    again = load_reference(config, TINY, runtime, init_seed=1)
    other = load_reference(config, TINY, runtime, init_seed=2)
    first = lambda ref: np.asarray(jax.tree.leaves(ref.params)[0], np.float32)  # noqa: E731
    assert one.source == "random init (seed 1)"
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(one.params))
    np.testing.assert_array_equal(first(one), first(again))
    assert not np.array_equal(first(one), first(other))
    assert [x.shape for x in jax.tree.leaves(one.params)] == [
        x.shape for x in jax.tree.leaves(model_lib.abstract_params(OTHER))]
