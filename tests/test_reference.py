"""The reference model's config (slm_jax/slm/reference.py); its loading is
tests/test_reference_model.py."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from slm_jax import model as model_lib
from slm_jax.slm import reference as reference_lib
from slm_jax.slm.reference import ReferenceConfig

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
