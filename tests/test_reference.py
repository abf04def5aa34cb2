"""The reference model's one home (slm_jax/slm/reference.py): its config and its loading."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax import model as model_lib
from slm_jax.parallel.checkpoint import Checkpointer
from slm_jax.parallel.runtime import Runtime
from slm_jax.slm.optim import OptimizerConfig, make_optimizer
from slm_jax.slm import reference as reference_lib
from slm_jax.slm.reference import ReferenceConfig, load_reference

TINY = model_lib.ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2,
                             mlp_dim=64, max_seq_len=32, dtype="float32")


def test_defaults_to_the_students_model_in_the_machines_fastest_dtype():
    reference = ReferenceConfig()
    assert reference.model_config(TINY) is TINY and reference.dtype == "auto"
    assert reference.forward_config(TINY) == dataclasses.replace(
        TINY, dtype=reference_lib.fastest_reference_dtype())
    assert ReferenceConfig(dtype="bfloat16").forward_config(TINY).dtype == "bfloat16"
    other = dataclasses.replace(TINY, n_layers=2)
    assert ReferenceConfig(model=other, dtype="float32").forward_config(TINY) == other


def test_bad_dtype_and_other_vocabulary_are_clear_errors():
    with pytest.raises(ValueError, match="ReferenceConfig.dtype='int8' is not a floating dtype"):
        ReferenceConfig(dtype="int8").forward_config(TINY)
    with pytest.raises(ValueError, match="reference vocab_size 128 != student vocab_size 64; "
                                         ".*same tokenizer"):
        ReferenceConfig(model=dataclasses.replace(TINY, vocab_size=128)).check_compatible(TINY)
    with pytest.raises(ValueError, match="set ReferenceConfig.checkpoint"):
        load_reference(ReferenceConfig(), TINY, Runtime.from_config())


def test_load_restores_sharded_params_in_the_reference_dtype(tmp_path):
    runtime = Runtime.from_config()
    tx, _ = make_optimizer(OptimizerConfig(), 1)
    state_sh = runtime.state_shardings(TINY, tx)
    from slm_jax.parallel import partition
    state = partition.init_state(TINY, tx, jax.random.key(3), state_sh)
    checkpointer = Checkpointer(str(tmp_path / "checkpoints"))
    checkpointer.save(state, force=True)
    checkpointer.close()
    with runtime.activate():
        ref = load_reference(ReferenceConfig(checkpoint=str(tmp_path / "checkpoints"),
                                             dtype="bfloat16"), TINY, runtime)
    assert ref.forward.dtype == "bfloat16"
    for got, want, sh in zip(jax.tree.leaves(ref.params), jax.tree.leaves(state.params),
                             jax.tree.leaves(runtime.param_shardings(TINY))):
        assert got.dtype == jnp.bfloat16 and got.sharding == sh
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want.astype(jnp.bfloat16)))


@pytest.mark.parametrize("backend, bf16_s, fp32_s, want", [
    ("cpu", 0.5, 1.0, "bfloat16"),    # a CPU with bf16 dot-product units
    ("cpu", 0.95, 1.0, "float32"),    # within noise: fp32 (no bf16 rounding for nothing)
    ("cpu", 1.4, 1.0, "float32"),     # bf16 emulated: slower
    ("gpu", 9.0, 1.0, "bfloat16"),    # accelerators always compute in bf16
])
def test_auto_picks_bf16_only_where_it_is_faster(monkeypatch, backend, bf16_s, fp32_s, want):
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    monkeypatch.setattr(reference_lib, "_matmul_seconds",
                        lambda dtype: bf16_s if dtype == jnp.bfloat16 else fp32_s)
    reference_lib.fastest_reference_dtype.cache_clear()
    try:
        assert reference_lib.fastest_reference_dtype() == want
    finally:
        reference_lib.fastest_reference_dtype.cache_clear()
