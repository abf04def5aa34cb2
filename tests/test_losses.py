"""Chunked per-token cross-entropy matches the naive full-logits loss and saves memory."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from slm_jax.slm.losses import per_token_loss


def _naive_loss(hidden_BTD, unembed_DV, targets_BT):
    logits_BTV = jnp.einsum("btd,dv->btv", hidden_BTD, unembed_DV.astype(hidden_BTD.dtype),
                            preferred_element_type=jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits_BTV, targets_BT)


def _inputs(batch, length, d_model, vocab, dtype, seed=0):
    k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
    hidden = jax.random.normal(k1, (batch, length, d_model), jnp.float32).astype(dtype)
    unembed = jax.random.normal(k2, (d_model, vocab), jnp.float32) * 0.3
    targets = jax.random.randint(k3, (batch, length), 0, vocab)
    weights = jax.random.uniform(k4, (batch, length))  # non-uniform cotangent for the grad check
    return hidden, unembed, targets, weights


@pytest.mark.parametrize("length,chunk_size", [(32, 8), (30, 8), (5, 8)])
@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_matches_naive_value_and_grads(length, chunk_size, dtype, tol):
    hidden, unembed, targets, weights = _inputs(2, length, 16, 64, dtype)
    chunked = per_token_loss(hidden, unembed, targets, chunk_size=chunk_size)
    naive = _naive_loss(hidden, unembed, targets)
    assert chunked.shape == (2, length) and chunked.dtype == jnp.float32
    np.testing.assert_allclose(chunked, naive, rtol=tol, atol=tol)

    def weighted(fn):
        return lambda h, w: jnp.sum(fn(h, w, targets) * weights)

    chunk_fn = lambda h, w, t: per_token_loss(h, w, t, chunk_size=chunk_size)
    g_chunked = jax.grad(weighted(chunk_fn), argnums=(0, 1))(hidden, unembed)
    g_naive = jax.grad(weighted(_naive_loss), argnums=(0, 1))(hidden, unembed)
    for got, want in zip(g_chunked, g_naive):
        assert got.dtype == want.dtype
        scale = float(jnp.max(jnp.abs(want.astype(jnp.float32))))
        np.testing.assert_allclose(got.astype(jnp.float32), want.astype(jnp.float32),
                                   rtol=tol, atol=tol * scale)


def test_does_not_hold_full_fp32_logits():
    batch, length, d_model, vocab = 2, 2048, 64, 8192
    hidden = jax.ShapeDtypeStruct((batch, length, d_model), jnp.float32)
    unembed = jax.ShapeDtypeStruct((d_model, vocab), jnp.float32)
    targets = jax.ShapeDtypeStruct((batch, length), jnp.int32)

    def temp_bytes(loss_fn):
        grad_fn = jax.grad(lambda h, w, t: jnp.sum(loss_fn(h, w, t)), argnums=(0, 1))
        analysis = jax.jit(grad_fn).lower(hidden, unembed, targets).compile().memory_analysis()
        if analysis is None or not hasattr(analysis, "temp_size_in_bytes"):
            pytest.skip("compiled memory_analysis() is unavailable on this backend")
        return analysis.temp_size_in_bytes

    chunked = temp_bytes(lambda h, w, t: per_token_loss(h, w, t, chunk_size=256))
    naive = temp_bytes(_naive_loss)
    full_logits_bytes = batch * length * vocab * 4
    assert naive >= full_logits_bytes  # sanity: the naive path really materialises logits
    assert chunked < naive / 2, (chunked, naive)


@pytest.mark.parametrize("chunk_size", [0, 8])
def test_entropy_is_the_predicted_distributions_and_carries_no_gradient(chunk_size):
    hidden, unembed, targets, weights = _inputs(2, 30, 16, 64, jnp.float32)
    loss, entropy = per_token_loss(hidden, unembed, targets, chunk_size=chunk_size,
                                   with_entropy=True)
    logits = np.einsum("btd,dv->btv", np.asarray(hidden, np.float64), np.asarray(unembed))
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    np.testing.assert_allclose(entropy, -(probs * np.log(probs)).sum(-1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(loss, _naive_loss(hidden, unembed, targets), rtol=1e-5, atol=1e-5)
    # the entropy is a score, not an objective: the loss's gradient is unchanged by it
    with_entropy = jax.grad(lambda h: jnp.sum(per_token_loss(
        h, unembed, targets, chunk_size=chunk_size, with_entropy=True)[1]))(hidden)
    assert not np.asarray(with_entropy).any()
