"""The reference model's config (slm_jax/slm/reference.py); its loading is
tests/test_reference_model.py."""

import dataclasses

import pytest

from slm_jax import hardware
from slm_jax import model as model_lib
from slm_jax.slm.reference import ReferenceConfig

TINY = model_lib.ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2,
                             mlp_dim=64, max_seq_len=32, dtype="float32")


def test_defaults_to_the_students_model_in_the_machines_fastest_dtype():
    reference = ReferenceConfig()
    assert reference.model_config(TINY) is TINY and reference.dtype == "auto"
    assert reference.forward_config(TINY) == dataclasses.replace(
        TINY, dtype=hardware.fastest_forward_dtype())
    assert ReferenceConfig(dtype="bfloat16").forward_config(TINY).dtype == "bfloat16"
    other = dataclasses.replace(TINY, n_layers=2)
    assert ReferenceConfig(model=other, dtype="float32").forward_config(TINY) == other


def test_bad_dtype_and_other_vocabulary_are_clear_errors():
    with pytest.raises(ValueError, match="ReferenceConfig.dtype='int8' is not a floating dtype"):
        ReferenceConfig(dtype="int8").forward_config(TINY)
    with pytest.raises(ValueError, match="reference vocab_size 128 != student vocab_size 64; "
                                         ".*same tokenizer"):
        ReferenceConfig(model=dataclasses.replace(TINY, vocab_size=128)).check_compatible(TINY)
