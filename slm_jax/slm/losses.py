"""Per-token cross-entropy computed in token chunks, so full [B, T, V] fp32 logits never exist."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from slm_jax.model.decoder import project


def _chunk_loss(hidden_BCD: jax.Array, unembed_DV: jax.Array, targets_BC: jax.Array,
                with_entropy: bool = False):
    """-log p(target) for one chunk (and, `with_entropy`, the entropy of the predicted
    distribution, without gradient); logits live only inside this function."""
    logits_BCV = project(hidden_BCD, unembed_DV, preferred_element_type=jnp.float32)
    log_normalizer_BC = jax.nn.logsumexp(logits_BCV, axis=-1)
    target_logit_BC = jnp.take_along_axis(logits_BCV, targets_BC[..., None], axis=-1)[..., 0]
    loss_BC = log_normalizer_BC - target_logit_BC
    if not with_entropy:
        return loss_BC
    logits_BCV = jax.lax.stop_gradient(logits_BCV)
    log_probs_BCV = logits_BCV - jax.lax.stop_gradient(log_normalizer_BC)[..., None]
    return loss_BC, -(jnp.exp(log_probs_BCV) * log_probs_BCV).sum(axis=-1)


def per_token_loss(hidden_BTD: jax.Array, unembed_DV: jax.Array, targets_BT: jax.Array, *,
                   chunk_size: int = 1024, with_entropy: bool = False):
    """Unreduced cross-entropy [B, T] (float32) of `targets_BT` under logits = hidden @ unembed.

    The token axis is processed `chunk_size` tokens at a time under `jax.checkpoint`, so both
    the forward and the backward pass hold only one chunk's [B, chunk, V] fp32 logits (the
    backward recomputes them). When T is not a multiple of chunk_size, T is zero-padded up to
    the next multiple and the padded positions are dropped from the result; chunk_size is
    clipped to T so short sequences cost no padding. The matmul runs in hidden's dtype with
    fp32 accumulation; the log-softmax is fp32. Weighting and masking are left to callers.

    `with_entropy`: also the predictive entropy [B, T] of each position (a constant: no
    gradient), returned as (loss, entropy); ESLM's score (SelectionConfig.score='entropy').

    `chunk_size=0` is the plain loss: full [B, T, V] fp32 logits, kept for the backward
    pass instead of recomputed (one vocabulary matmul less per step; right when B*T*V*4
    bytes is small next to the activations, e.g. the CPU bench model).
    """
    if chunk_size < 0:
        raise ValueError(f"chunk_size={chunk_size} must be >= 0 (0: no chunking)")
    if chunk_size == 0:
        return _chunk_loss(hidden_BTD, unembed_DV.astype(hidden_BTD.dtype), targets_BT,
                           with_entropy)
    batch, length, d_model = hidden_BTD.shape
    chunk = min(chunk_size, length)
    n_chunks = -(-length // chunk)
    padded = n_chunks * chunk
    if padded != length:
        pad = padded - length
        hidden_BTD = jnp.pad(hidden_BTD, ((0, 0), (0, pad), (0, 0)))
        targets_BT = jnp.pad(targets_BT, ((0, 0), (0, pad)))
    unembed_DV = unembed_DV.astype(hidden_BTD.dtype)

    # Batch stays the leading axis of every chunk so batch sharding carries through the scan.
    hidden_NBCD = jnp.moveaxis(hidden_BTD.reshape(batch, n_chunks, chunk, d_model), 1, 0)
    targets_NBC = jnp.moveaxis(targets_BT.reshape(batch, n_chunks, chunk), 1, 0)
    chunk_loss = jax.checkpoint(_chunk_loss, static_argnums=(3,))

    def body(carry, xs):
        hidden_BCD, targets_BC = xs
        return carry, chunk_loss(hidden_BCD, unembed_DV, targets_BC, with_entropy)

    _, out_NBC = jax.lax.scan(body, None, (hidden_NBCD, targets_NBC))
    unchunk = lambda x_NBC: jnp.moveaxis(x_NBC, 0, 1).reshape(batch, padded)[:, :length]  # noqa: E731
    return jax.tree.map(unchunk, out_NBC)
