"""Every attention kernel of the decoder, and the choice between them.

`ModelConfig.attention` names the training/scoring kernel:
  "xla"                    `blockwise_attention`: causal attention in query blocks with a
                           FlashAttention-2 backward written in XLA ops (CPU, TPU fallback)
  "dot_product_attention"  `jax.nn.dot_product_attention`: cuDNN flash attention on GPU
                           for bf16/fp16, XLA elsewhere
  "splash"                 Pallas splash attention (TPU only; checked on CPU through the
                           Pallas interpreter)
  "auto"                   cuDNN on GPU, splash on TPU for lengths divisible by 128, xla
                           otherwise
All of them respect packed segments. Decoding with a KV cache uses `masked_attention`
(an explicit [B, T, S] mask over the cache slots).

The blockwise kernel:Causal attention in query blocks with a hand-written backward pass (FlashAttention-2's
math in plain XLA ops): the "xla" attention backend of the decoder.

Query block i of `block` rows sees keys [0, end of block i) only, so the key blocks past
the diagonal are never computed (about half of the [T, T] scores at T = 4 blocks). The
forward keeps only the output and the row log-sum-exp; the backward recomputes the
probabilities block by block from them:

    P   = exp(S - lse)                  S = Q K^T / sqrt(d), masked
    dV  = P^T dO        dP = dO V^T     D = rowsum(dO * O)
    dS  = P * (dP - D)  dQ = dS K / sqrt(d)   dK = dS^T Q / sqrt(d)

Autodiff of a softmax instead saves the [B, H, T, S] probabilities and runs several more
elementwise passes over them; on the 2-core CPU bench this form makes the whole training
step ~8% faster. Matmuls take their inputs in the activation dtype and accumulate in fp32;
softmax statistics are fp32.
"""
from __future__ import annotations

import functools
import logging
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from slm_jax import hardware
from slm_jax.model.config import ACT_BATCH, ACT_HEADS, ModelConfig


# Query rows per block (fastest of 64/128/256/512 for the CPU bench step at T = 512).
BLOCK = 128
# A finite fill keeps rows finite, even a row that sees no key at all (it then averages
# all values, as a softmax of equal scores does).
_MASKED = jnp.finfo(jnp.float32).min


def _blocks(length: int, block: int):
    return [(start, min(start + block, length)) for start in range(0, length, block)]


def _query_heads(x_BTHK, n_kv_heads: int):
    """[B, T, H, K] -> [B, N, G, T, K]: query head h = kv head n * G + g."""
    b, t, h, k = x_BTHK.shape
    return jnp.transpose(x_BTHK.reshape(b, t, n_kv_heads, h // n_kv_heads, k), (0, 2, 3, 1, 4))


def _kv_heads(x_BSNK):
    return jnp.transpose(x_BSNK, (0, 2, 1, 3))


def _grouped_heads(q_BTHK, k_BSNK, v_BSNK):
    """Heads-major q [B, N, G, T, K] and k, v [B, N, S, K]."""
    return _query_heads(q_BTHK, k_BSNK.shape[2]), _kv_heads(k_BSNK), _kv_heads(v_BSNK)


def _tokens_first(x_BNGTK):
    b, n, g, t, k = x_BNGTK.shape
    return jnp.transpose(x_BNGTK, (0, 3, 1, 2, 4)).reshape(b, t, n * g, k)


def _masked_scores(q_BNGtK, k_BNsK, mask_BtS):
    scale = 1.0 / math.sqrt(q_BNGtK.shape[-1])
    scores = jnp.einsum("bngtk,bnsk->bngts", q_BNGtK, k_BNsK,
                        preferred_element_type=jnp.float32) * scale
    return jnp.where(mask_BtS[:, None, None], scores, _MASKED)


def _forward(q_BTHK, k_BSNK, v_BSNK, mask_BTS, block):
    q_BNGTK, k_BNSK, v_BNSK = _grouped_heads(q_BTHK, k_BSNK, v_BSNK)
    outs, lses = [], []
    for start, end in _blocks(q_BTHK.shape[1], block):
        scores = _masked_scores(q_BNGTK[:, :, :, start:end], k_BNSK[:, :, :end],
                                mask_BTS[:, start:end, :end])
        row_max = jnp.max(scores, axis=-1, keepdims=True)
        probs = jnp.exp(scores - row_max)
        row_sum = jnp.sum(probs, axis=-1, keepdims=True)
        out = jnp.einsum("bngts,bnsk->bngtk", probs.astype(v_BNSK.dtype), v_BNSK[:, :, :end],
                         preferred_element_type=jnp.float32)
        outs.append(out / row_sum)
        lses.append(row_max + jnp.log(row_sum))
    out_BNGTK = jnp.concatenate(outs, axis=3)
    return _tokens_first(out_BNGTK).astype(q_BTHK.dtype), jnp.concatenate(lses, axis=3)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def blockwise_attention(q_BTHK, k_BSNK, v_BSNK, mask_BTS, block: int = BLOCK):
    """Grouped-query attention for a causal `mask_BTS` ([B, T, T] bool: query t sees key s;
    it must hide every s > t). Values and gradients match a masked softmax attention."""
    return _forward(q_BTHK, k_BSNK, v_BSNK, mask_BTS, block)[0]


def _blockwise_attention_fwd(q_BTHK, k_BSNK, v_BSNK, mask_BTS, block):
    out_BTHK, lse_BNGT1 = _forward(q_BTHK, k_BSNK, v_BSNK, mask_BTS, block)
    return out_BTHK, (q_BTHK, k_BSNK, v_BSNK, mask_BTS, out_BTHK, lse_BNGT1)


def _blockwise_attention_bwd(block, residuals, dout_BTHK):
    q_BTHK, k_BSNK, v_BSNK, mask_BTS, out_BTHK, lse_BNGT1 = residuals
    n = k_BSNK.shape[2]
    q_BNGTK, k_BNSK, v_BNSK = _grouped_heads(q_BTHK, k_BSNK, v_BSNK)
    dout_BNGTK, out_BNGTK = _query_heads(dout_BTHK, n), _query_heads(out_BTHK, n)
    scale = 1.0 / math.sqrt(q_BTHK.shape[-1])
    delta_BNGT1 = jnp.sum(dout_BNGTK.astype(jnp.float32) * out_BNGTK.astype(jnp.float32),
                          axis=-1, keepdims=True)
    dqs = []
    dk_BNSK = jnp.zeros(k_BNSK.shape, jnp.float32)
    dv_BNSK = jnp.zeros(v_BNSK.shape, jnp.float32)
    for start, end in _blocks(q_BTHK.shape[1], block):
        q_blk, dout_blk = q_BNGTK[:, :, :, start:end], dout_BNGTK[:, :, :, start:end]
        mask_BtS = mask_BTS[:, start:end, :end]
        scores = _masked_scores(q_blk, k_BNSK[:, :, :end], mask_BtS)
        probs = jnp.exp(scores - lse_BNGT1[:, :, :, start:end])
        dv_BNSK = dv_BNSK.at[:, :, :end].add(jnp.einsum(
            "bngts,bngtk->bnsk", probs.astype(dout_blk.dtype), dout_blk,
            preferred_element_type=jnp.float32))
        dprobs = jnp.einsum("bngtk,bnsk->bngts", dout_blk, v_BNSK[:, :, :end],
                            preferred_element_type=jnp.float32)
        dscores = jnp.where(mask_BtS[:, None, None], probs * (dprobs - delta_BNGT1[:, :, :, start:end]), 0.0)
        dscores = (dscores * scale).astype(q_BTHK.dtype)
        dqs.append(jnp.einsum("bngts,bnsk->bngtk", dscores, k_BNSK[:, :, :end],
                              preferred_element_type=jnp.float32))
        dk_BNSK = dk_BNSK.at[:, :, :end].add(jnp.einsum(
            "bngts,bngtk->bnsk", dscores, q_blk, preferred_element_type=jnp.float32))
    dq_BTHK = _tokens_first(jnp.concatenate(dqs, axis=3)).astype(q_BTHK.dtype)
    dk_BSNK = _kv_heads(dk_BNSK).astype(k_BSNK.dtype)  # the swap is its own inverse
    dv_BSNK = _kv_heads(dv_BNSK).astype(v_BSNK.dtype)
    return dq_BTHK, dk_BSNK, dv_BSNK, None


blockwise_attention.defvjp(_blockwise_attention_fwd, _blockwise_attention_bwd)


def attention_mask(segment_ids_BT: jax.Array) -> jax.Array:
    """[B, T, S] bool: query t sees key s iff s <= t and both lie in the same segment."""
    length = segment_ids_BT.shape[1]
    causal_TS = jnp.tril(jnp.ones((length, length), dtype=jnp.bool_))
    same_segment_BTS = segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :]
    return causal_TS[None] & same_segment_BTS


def resolve_attention(config: ModelConfig, length: int) -> str:
    """The backend `config.attention` names for sequences of `length`; "auto" picks by
    the platform the program is built for (the mesh's devices): cuDNN on GPU, splash on TPU
    when `length` is a multiple of its 128 block (else xla), xla on CPU.
    """
    if config.attention != "auto":
        return config.attention
    backend = hardware.target_platform()
    if backend == "gpu":
        return "dot_product_attention"
    if backend == "tpu" and length % SPLASH_BLOCK == 0:
        return "splash"
    return "xla"


def cpu_low_precision(x) -> bool:
    """Whether a matmul on `x` should ask for an fp32 result (see decoder.project)."""
    return x.dtype != jnp.float32 and hardware.target_platform() == "cpu"


def masked_attention(q_BTHK, k_BSNK, v_BSNK, mask_BTS):
    """Grouped-query attention with einsums; `mask_BTS` says which keys each query sees.

    Query heads are split into (kv head, group) so each kv head serves its group
    without materialising repeated K/V. Scores and softmax are in fp32.
    """
    b, t, h, k = q_BTHK.shape
    kv = k_BSNK.shape[2]
    q_BTNGK = q_BTHK.reshape(b, t, kv, h // kv, k)
    scores_BNGTS = jnp.einsum("btngk,bsnk->bngts", q_BTNGK, k_BSNK,
                              preferred_element_type=jnp.float32) / math.sqrt(k)
    # A finite fill keeps rows finite, even a row that sees no key at all.
    scores_BNGTS = jnp.where(mask_BTS[:, None, None], scores_BNGTS, jnp.finfo(jnp.float32).min)
    probs_BNGTS = jax.nn.softmax(scores_BNGTS, axis=-1).astype(v_BSNK.dtype)
    if cpu_low_precision(v_BSNK):
        out_BTNGK = jnp.einsum("bngts,bsnk->btngk", probs_BNGTS, v_BSNK,
                               preferred_element_type=jnp.float32).astype(v_BSNK.dtype)
    else:
        out_BTNGK = jnp.einsum("bngts,bsnk->btngk", probs_BNGTS, v_BSNK)
    return out_BTNGK.reshape(b, t, h, k)


def dot_product_attention(q_BTHK, k_BSNK, v_BSNK, segment_ids_BT):
    """`jax.nn.dot_product_attention`: cuDNN flash attention on GPU for bf16/fp16, else XLA.

    cuDNN gets `is_causal` plus the same-segment mask (it folds the mask into a bias);
    the XLA implementation gets the full causal-and-segment mask.
    """
    same_segment_B1TS = (segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :])[:, None]
    if hardware.target_platform() == "gpu" and q_BTHK.dtype in (jnp.bfloat16, jnp.float16):
        try:
            return jax.nn.dot_product_attention(q_BTHK, k_BSNK, v_BSNK, mask=same_segment_B1TS,
                                                is_causal=True, implementation="cudnn")
        except (NotImplementedError, ValueError, RuntimeError) as e:
            # cuDNN's shape/dtype/mask checks run at trace time: fall back, don't fail the run.
            logging.warning("cuDNN attention unavailable (%s); using the XLA implementation", e)
    return jax.nn.dot_product_attention(q_BTHK, k_BSNK, v_BSNK,
                                        mask=attention_mask(segment_ids_BT)[:, None])


# Splash attention's smallest block: sequence lengths must be a multiple of it.
SPLASH_BLOCK = 128


def splash_attention(q_BTHK, k_BSNK, v_BSNK, segment_ids_BT, interpret: bool = False):
    """Pallas splash attention (TPU only): causal within segments, K/V repeated per group.

    Under a mesh the kernel runs per shard (shard_map over the batch and head axes the
    active logical rules give the activations). `interpret=True` runs the same kernel
    through the Pallas interpreter on any backend: how the tests check it on CPU.
    """
    platform = hardware.target_platform()
    if platform != "tpu" and not interpret:
        raise ValueError(f"ModelConfig.attention='splash' needs a TPU (Pallas TPU kernels), but "
                         f"the program is built for {platform!r} devices; set "
                         "ModelConfig.attention to 'auto', 'xla' or 'dot_product_attention'")
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    b, t, h, k = q_BTHK.shape
    if t % SPLASH_BLOCK:
        raise ValueError(f"ModelConfig.attention='splash' needs a sequence length divisible by "
                         f"{SPLASH_BLOCK}, got {t}; pad the sequences or set "
                         "ModelConfig.attention='auto' (xla for such lengths)")
    groups = h // k_BSNK.shape[2]
    q_BHTK = jnp.transpose(q_BTHK / math.sqrt(k), (0, 2, 1, 3))
    k_BHSK = jnp.transpose(jnp.repeat(k_BSNK, groups, axis=2), (0, 2, 1, 3))
    v_BHSK = jnp.transpose(jnp.repeat(v_BSNK, groups, axis=2), (0, 2, 1, 3))
    block = min(512, t)

    def local(q, key, value, seg):
        heads = q.shape[1]
        kernel = splash.make_splash_mha(
            mask=splash.MultiHeadMask([splash.CausalMask((t, t))] * heads),
            head_shards=1, q_seq_shards=1,
            block_sizes=splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                                          block_q_dkv=block, block_kv_dkv=block,
                                          block_kv_dkv_compute=block, block_q_dq=block,
                                          block_kv_dq=block),
            interpret=interpret)
        return jax.vmap(lambda q1, k1, v1, s1: kernel(
            q1, k1, v1, segment_ids=splash.SegmentIds(q=s1, kv=s1)))(q, key, value, seg)

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        out_BHTK = local(q_BHTK, k_BHSK, v_BHSK, segment_ids_BT)
    else:
        qkv = nn.logical_to_mesh_axes((ACT_BATCH, ACT_HEADS, None, None))
        seg = nn.logical_to_mesh_axes((ACT_BATCH, None))
        out_BHTK = jax.shard_map(local, mesh=mesh, in_specs=(qkv, qkv, qkv, seg),
                                 out_specs=qkv, check_vma=False)(q_BHTK, k_BHSK, v_BHSK,
                                                                 segment_ids_BT)
    return jnp.transpose(out_BHTK, (0, 2, 1, 3)).astype(q_BTHK.dtype)


def cache_mask(filled_BS: jax.Array, index, length: int) -> jax.Array:
    """[B, T, S]: the query at slot index + t sees the filled slots at or before it."""
    slots = filled_BS.shape[1]
    query_slot_T = index + jnp.arange(length, dtype=jnp.int32)
    causal_TS = jnp.arange(slots, dtype=jnp.int32)[None, :] <= query_slot_T[:, None]
    return filled_BS[:, None, :] & causal_TS[None]


def attend(config: ModelConfig, q_BTHK, k_BSNK, v_BSNK, segment_ids_BT):
    """Causal attention within segments by the kernel `config.attention` picks."""
    backend = resolve_attention(config, q_BTHK.shape[1])
    if backend == "xla":
        return blockwise_attention(q_BTHK, k_BSNK, v_BSNK, attention_mask(segment_ids_BT))
    if backend == "dot_product_attention":
        return dot_product_attention(q_BTHK, k_BSNK, v_BSNK, segment_ids_BT)
    return splash_attention(q_BTHK, k_BSNK, v_BSNK, segment_ids_BT)
