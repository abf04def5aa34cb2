"""The reference model's config (slm_jax/slm/reference.py) and its in-state sources (EMA,
snapshot); its loading is tests/test_reference_model.py."""

import dataclasses

import jax.numpy as jnp
import numpy as np
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


def test_ema_and_snapshot_follow_their_definitions():
    params = {"w": np.array([1.0, -2.0], np.float32)}
    new = {"w": np.array([3.0, 2.0], np.float32)}
    ema = ReferenceConfig(source="ema", ema_decay=0.75, dtype="bfloat16").self_reference()
    assert ema.initial(params)["w"].dtype == np.float32   # the average keeps the params' dtype
    np.testing.assert_allclose(ema.update(params, new, 1)["w"], 0.75 * params["w"] + 0.25 * new["w"])
    snap = ReferenceConfig(source="snapshot", snapshot_every=3, dtype="bfloat16").self_reference()
    ref = snap.initial(params)
    assert ref["w"].dtype == jnp.bfloat16                 # stored as the forward runs it
    for steps_done, expected in [(1, params), (2, params), (3, new), (4, params), (6, new)]:
        got = snap.update(ref, new, jnp.int32(steps_done))["w"]
        np.testing.assert_array_equal(np.asarray(got, np.float32), expected["w"])
    assert ReferenceConfig().self_reference() is None


@pytest.mark.parametrize("bindings, message", [
    (dict(source="self"), r"ReferenceConfig.source='self' is not one of .*'checkpoint'"),
    (dict(source="ema", ema_decay=1.0), r"ReferenceConfig.ema_decay=1.0 must be a float in \(0, 1\)"),
    (dict(source="ema", ema_decay=0), r"ReferenceConfig.ema_decay=0 must be a float"),
    (dict(source="snapshot", snapshot_every=0), r"ReferenceConfig.snapshot_every=0 must be an int >= 1"),
    (dict(source="ema", checkpoint="runs/ref/checkpoints"),
     r"source='ema' takes the reference from the student's own params, so "
     r"ReferenceConfig.checkpoint is not used: unset it"),
])
def test_bad_reference_sources_name_the_binding(bindings, message):
    with pytest.raises(ValueError, match=message):
        ReferenceConfig(**bindings)
