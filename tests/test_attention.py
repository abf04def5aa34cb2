"""Attention backends agree on packed inputs: 'xla' (flash-style blocks), masked softmax,
'dot_product_attention', and 'splash' through the Pallas interpreter (it needs a TPU otherwise)."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax import hardware
from slm_jax import model as model_lib
from slm_jax.model import attention

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
    assert attention.resolve_attention(dataclasses.replace(TINY, attention="auto"), 256) == "xla"
    config = dataclasses.replace(TINY, attention="splash")
    params = model_lib.abstract_params(TINY)
    with pytest.raises(ValueError, match="needs a TPU"):
        jax.eval_shape(lambda p: model_lib.Decoder(config).apply(
            {"params": p}, jnp.zeros((1, 8), jnp.int32)), params)
    with pytest.raises(ValueError, match="ModelConfig.attention='flash' is not one of .*; set "
                                         "ModelConfig.attention to one of them"):
        dataclasses.replace(TINY, attention="flash")


def _packed_inputs(batch, length, heads, kv_heads, head_dim, dtype, seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(keys[0], (batch, length, heads, head_dim), jnp.float32)
    k = jax.random.normal(keys[1], (batch, length, kv_heads, head_dim), jnp.float32)
    v = jax.random.normal(keys[2], (batch, length, kv_heads, head_dim), jnp.float32)
    dout = jax.random.normal(keys[3], q.shape, jnp.float32)
    # Row 0: three documents and trailing padding (segment 0); row 1: one document.
    cuts = [length // 3, length // 3 + length // 4, length - 5]
    row0 = np.zeros(length, np.int32)
    row0[:cuts[0]], row0[cuts[0]:cuts[1]], row0[cuts[1]:cuts[2]] = 1, 2, 3
    segments = jnp.asarray(np.stack([row0, np.ones(length, np.int32)]))
    cast = lambda x: x.astype(dtype)
    return cast(q), cast(k), cast(v), cast(dout), attention.attention_mask(segments), segments


def _vjp_outputs(fn, q, k, v, dout):
    out, pullback = jax.vjp(fn, q, k, v)
    return (out,) + pullback(dout)


@pytest.mark.parametrize("length,block", [(300, 64), (256, 128), (40, 128)])
def test_flash_attention_matches_masked_softmax_values_and_grads(length, block):
    blockwise_attention = attention.blockwise_attention
    q, k, v, dout, mask, _ = _packed_inputs(2, length, 4, 2, 16, jnp.float32)
    got = jax.jit(lambda: _vjp_outputs(
        lambda q_, k_, v_: blockwise_attention(q_, k_, v_, mask, block), q, k, v, dout))()
    want = jax.jit(lambda: _vjp_outputs(
        lambda q_, k_, v_: attention.masked_attention(q_, k_, v_, mask), q, k, v, dout))()
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        np.testing.assert_allclose(g, w, atol=2e-5, rtol=2e-5, err_msg=name)


def test_flash_attention_bf16_close_to_fp32():
    blockwise_attention = attention.blockwise_attention
    q, k, v, dout, mask, _ = _packed_inputs(2, 200, 4, 2, 16, jnp.bfloat16, seed=1)
    got = jax.jit(functools.partial(blockwise_attention, block=64))(q, k, v, mask)
    assert got.dtype == jnp.bfloat16
    f32 = lambda x: x.astype(jnp.float32)
    want = attention.masked_attention(f32(q), f32(k), f32(v), mask)
    np.testing.assert_allclose(f32(got), want, atol=3e-2, rtol=3e-2)
    grads = jax.grad(lambda q_: jnp.vdot(f32(blockwise_attention(q_, k, v, mask, 64)), f32(dout)))(q)
    assert grads.dtype == jnp.bfloat16 and bool(jnp.isfinite(f32(grads)).all())


def test_splash_attention_matches_masked_softmax_in_interpret_mode():
    """The splash wrapper (scaling, GQA repeat, layouts, segments) through the Pallas
    interpreter: values and gradients equal masked softmax attention."""
    q, k, v, dout, mask, segments = _packed_inputs(2, 256, 4, 2, 64, jnp.float32, seed=2)
    splash = functools.partial(attention.splash_attention, segment_ids_BT=segments,
                               interpret=True)
    got = jax.jit(lambda: _vjp_outputs(splash, q, k, v, dout))()
    want = jax.jit(lambda: _vjp_outputs(
        lambda q_, k_, v_: attention.masked_attention(q_, k_, v_, mask), q, k, v, dout))()
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        np.testing.assert_allclose(g, w, atol=1e-4, rtol=1e-4, err_msg=name)


def test_splash_attention_under_a_mesh_runs_per_shard_in_interpret_mode():
    from slm_jax.parallel import sharding
    q, k, v, dout, mask, segments = _packed_inputs(2, 128, 4, 2, 64, jnp.float32, seed=3)
    mesh_config = sharding.MeshConfig(data=2, fsdp=1, tensor=4)
    mesh = sharding.make_mesh(mesh_config)
    with sharding.activation_sharding(mesh, mesh_config.rules):
        got = jax.jit(lambda: _vjp_outputs(functools.partial(
            attention.splash_attention, segment_ids_BT=segments, interpret=True),
            q, k, v, dout))()
    want = _vjp_outputs(lambda q_, k_, v_: attention.masked_attention(q_, k_, v_, mask),
                        q, k, v, dout)
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        np.testing.assert_allclose(g, w, atol=1e-4, rtol=1e-4, err_msg=name)


def test_auto_attention_picks_by_backend_and_length(monkeypatch):
    auto = dataclasses.replace(TINY, attention="auto")
    for backend, length, expected in [("tpu", 2048, "splash"), ("tpu", 100, "xla"),
                                      ("gpu", 100, "dot_product_attention"),
                                      ("cpu", 2048, "xla")]:
        monkeypatch.setattr(hardware, "target_platform", lambda: backend)
        assert attention.resolve_attention(auto, length) == expected, (backend, length)
    assert attention.resolve_attention(TINY, 2048) == "xla"  # named backends are kept


def test_a_splash_model_initialises_on_any_mesh():
    """Params do not depend on the kernel: init never runs splash (whose block and fsdp split
    the init's 1 x 8 dummy tokens could not meet), on CPU or under a sharded mesh."""
    from slm_jax.parallel import sharding
    config = dataclasses.replace(TINY, attention="splash")
    mesh_config = sharding.MeshConfig(data=1, fsdp=-1)
    mesh = sharding.make_mesh(mesh_config)
    with sharding.activation_sharding(mesh, mesh_config.rules):
        params = model_lib.init_params(config, jax.random.key(0))
    want = model_lib.init_params(TINY, jax.random.key(0))
    jax.tree.map(np.testing.assert_array_equal, params, want)
