"""Attention backends: 'xla' and 'dot_product_attention' agree on packed inputs;
'splash' is TPU-only."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax import model as model_lib

TINY = model_lib.ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2,
                             mlp_dim=64, max_seq_len=32, dtype="float32", attention="xla")


@functools.partial(jax.jit, static_argnums=0)
def hidden(config, params, tokens, positions, segments):
    return model_lib.Decoder(config).apply({"params": params}, tokens, positions, segments)


def test_xla_and_dot_product_attention_agree_on_packed_segments():
    config = TINY  # grouped-query: 4 query heads share 2 kv heads
    params = model_lib.init_params(config, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, config.vocab_size)
    segments = jnp.array([[1] * 5 + [2] * 7 + [0] * 4, [1] * 16])
    positions = jnp.array([list(range(5)) + list(range(7)) + list(range(4)), list(range(16))])
    xla = hidden(config, params, tokens, positions, segments)
    dpa = hidden(dataclasses.replace(config, attention="dot_product_attention"), params, tokens,
                 positions, segments)
    np.testing.assert_allclose(dpa, xla, atol=1e-5, rtol=1e-5)
    # Packing is respected: changing document 1 leaves document 2's states alone.
    changed = tokens.at[0, :5].set((tokens[0, :5] + 1) % config.vocab_size)
    dpa_changed = hidden(dataclasses.replace(config, attention="dot_product_attention"), params,
                         changed, positions, segments)
    np.testing.assert_allclose(dpa_changed[0, 5:12], dpa[0, 5:12], atol=1e-6)


def test_auto_is_xla_on_cpu_and_splash_needs_tpu():
    assert model_lib.resolve_attention(dataclasses.replace(TINY, attention="auto")) == "xla"
    config = dataclasses.replace(TINY, attention="splash")
    params = model_lib.abstract_params(TINY)
    with pytest.raises(ValueError, match="needs a TPU"):
        jax.eval_shape(lambda p: model_lib.Decoder(config).apply(
            {"params": p}, jnp.zeros((1, 8), jnp.int32)), params)
    with pytest.raises(ValueError, match="--gin.ModelConfig.attention"):
        dataclasses.replace(TINY, attention="flash")
