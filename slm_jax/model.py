"""Llama-family decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU) in flax.linen.

The decoder returns final-normed hidden states, not logits: the loss projects onto the
vocabulary in chunks (see `slm_jax.losses`) so [B, T, V] fp32 logits never exist at once.
Every parameter carries logical axis names and activations carry logical sharding
constraints; both are no-ops unless `nn.logical_axis_rules` are active.

Attention backends (`ModelConfig.attention`): "xla" (causal attention in query blocks with
a FlashAttention-style backward, `slm_jax.flash_attention`),
"dot_product_attention" (`jax.nn.dot_product_attention`, cuDNN flash attention on GPU
for bf16/fp16), "splash" (Pallas splash attention, TPU only) and "auto" (cuDNN on GPU,
splash on TPU for lengths that are multiples of 128, xla otherwise). All of them respect
packed segments. Splash is checked against the others through the Pallas interpreter on
CPU; this project's CI and development machines have no TPU, so if the kernel fails to
compile on one, `--gin.ModelConfig.attention=xla` is the fallback.

Decoding with a KV cache: `init_cache` + `Decoder(config).apply(..., cache=cache)`
returns (hidden, new cache). The cache has one slot per position of a fixed
[B, S] buffer; a call writes its T tokens at slots [index, index + T) and each
query sees the filled slots at or before its own. Positions (RoPE) are per
row, so left- and right-padded prompts both work (see slm_jax/generate.py).
"""
from __future__ import annotations

import dataclasses
import logging
import math

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from slm_jax import flash_attention

REMAT_POLICIES = ("none", "full", "dots")
ATTENTION_BACKENDS = ("auto", "xla", "dot_product_attention", "splash")

# Any fixed shape works: parameter shapes do not depend on batch or length.
_DUMMY_TOKENS_SHAPE = (1, 8)

# Logical activation layouts; mapped to mesh axes only when nn.logical_axis_rules are active.
ACT_BATCH, ACT_LENGTH = "activation_batch", "activation_length"
ACT_EMBED, ACT_MLP, ACT_VOCAB = "activation_embed", "activation_mlp", "activation_vocab"
ACT_HEADS, ACT_KV_HEADS = "activation_heads", "activation_kv_heads"
ACT_HEAD_DIM = "activation_head_dim"
LAYOUT_BTD = (ACT_BATCH, ACT_LENGTH, ACT_EMBED)
LAYOUT_BTF = (ACT_BATCH, ACT_LENGTH, ACT_MLP)
LAYOUT_BTV = (ACT_BATCH, ACT_LENGTH, ACT_VOCAB)
LAYOUT_BTHK = (ACT_BATCH, ACT_LENGTH, ACT_HEADS, ACT_HEAD_DIM)
LAYOUT_BTNK = (ACT_BATCH, ACT_LENGTH, ACT_KV_HEADS, ACT_HEAD_DIM)
# KV cache of one layer [B, S, N, K]; scanned models stack layers in front.
LAYOUT_CACHE = LAYOUT_BTNK


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture and numerics of the decoder; bind fields with `ModelConfig.<field>` in gin."""

    vocab_size: int = 32000
    d_model: int = 2048
    n_layers: int = 22
    n_heads: int = 32
    n_kv_heads: int = 4
    head_dim: int | None = None
    mlp_dim: int = 5632
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    max_seq_len: int = 2048
    dtype: str = "bfloat16"
    param_dtype: str = "float32"
    remat: str = "none"
    scan_layers: bool = False
    attention: str = "auto"

    def __post_init__(self):
        for field in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_dim",
                      "max_seq_len"):
            value = getattr(self, field)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"ModelConfig.{field}={value!r} must be a positive int; "
                                 f"set --gin.ModelConfig.{field} to one")
        if self.n_heads % self.n_kv_heads != 0:
            raise ValueError(f"ModelConfig.n_heads={self.n_heads} is not divisible by "
                             f"ModelConfig.n_kv_heads={self.n_kv_heads}; set "
                             "--gin.ModelConfig.n_kv_heads to a divisor of n_heads")
        if self.head_dim is None and self.d_model % self.n_heads != 0:
            raise ValueError(f"ModelConfig.d_model={self.d_model} is not divisible by "
                             f"ModelConfig.n_heads={self.n_heads}; set --gin.ModelConfig.head_dim "
                             "explicitly or change n_heads")
        if self.resolved_head_dim <= 0 or self.resolved_head_dim % 2 != 0:
            raise ValueError(f"ModelConfig.head_dim={self.resolved_head_dim} must be a positive "
                             "even int (RoPE rotates halves); set --gin.ModelConfig.head_dim "
                             "to one")
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"ModelConfig.attention={self.attention!r} is not one of "
                             f"{ATTENTION_BACKENDS}; set --gin.ModelConfig.attention to one "
                             "of them")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"ModelConfig.remat={self.remat!r} is not one of {REMAT_POLICIES}; "
                             "set --gin.ModelConfig.remat to one of them")
        for field in ("dtype", "param_dtype"):
            value = getattr(self, field)
            try:
                parsed = jnp.dtype(value)
            except TypeError:
                parsed = None
            if parsed is None or not jnp.issubdtype(parsed, jnp.floating):
                raise ValueError(f"ModelConfig.{field}={value!r} is not a floating dtype name; set "
                                 f"--gin.ModelConfig.{field} to e.g. 'bfloat16' or 'float32'")
        if self.rope_theta <= 0 or self.norm_eps <= 0:
            raise ValueError(f"ModelConfig.rope_theta={self.rope_theta} and ModelConfig.norm_eps="
                             f"{self.norm_eps} must be positive; fix the --gin.ModelConfig binding")

    @property
    def resolved_head_dim(self) -> int:
        """Per-head width: `head_dim` if set, else d_model // n_heads."""
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def params_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)


def _weight(module: nn.Module, name: str, shape: tuple[int, ...], names: tuple[str, ...],
            config: ModelConfig) -> jax.Array:
    """A normal(0.02) weight with logical axis names, cast to the compute dtype."""
    init = nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02), names)
    w = module.param(name, init, shape, config.params_dtype)
    return jnp.asarray(w, config.compute_dtype)


class RMSNorm(nn.Module):
    """Root-mean-square norm; statistics in fp32 because bf16 sums of squares lose precision."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        init = nn.with_logical_partitioning(nn.initializers.ones, ("norm",))
        scale_D = self.param("scale", init, (x_BTD.shape[-1],), self.config.params_dtype)
        x32_BTD = x_BTD.astype(jnp.float32)
        variance_BT1 = jnp.mean(jnp.square(x32_BTD), axis=-1, keepdims=True)
        normed_BTD = x32_BTD * jax.lax.rsqrt(variance_BT1 + self.config.norm_eps)
        return (normed_BTD * scale_D.astype(jnp.float32)).astype(self.config.compute_dtype)


def rope_cos_sin(positions_BT: jax.Array, head_dim: int, theta: float):
    """cos/sin tables [B, T, head_dim] in the Hugging Face Llama (non-interleaved) layout."""
    inv_freq_F = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs_BTF = positions_BT.astype(jnp.float32)[..., None] * inv_freq_F
    angles_BTK = jnp.concatenate([freqs_BTF, freqs_BTF], axis=-1)
    return jnp.cos(angles_BTK), jnp.sin(angles_BTK)


def apply_rope(x_BTHK: jax.Array, cos_BTK: jax.Array, sin_BTK: jax.Array) -> jax.Array:
    """Rotates the two halves of each head (HF `rotate_half`), in fp32."""
    x32 = x_BTHK.astype(jnp.float32)
    first, second = jnp.split(x32, 2, axis=-1)
    rotated = jnp.concatenate([-second, first], axis=-1)
    cos, sin = cos_BTK[:, :, None, :], sin_BTK[:, :, None, :]
    return (x32 * cos + rotated * sin).astype(x_BTHK.dtype)


def attention_mask(segment_ids_BT: jax.Array) -> jax.Array:
    """[B, T, S] bool: query t sees key s iff s <= t and both lie in the same segment."""
    length = segment_ids_BT.shape[1]
    causal_TS = jnp.tril(jnp.ones((length, length), dtype=jnp.bool_))
    same_segment_BTS = segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :]
    return causal_TS[None] & same_segment_BTS


def resolve_attention(config: ModelConfig, length: int) -> str:
    """The backend `config.attention` names for sequences of `length`; "auto" picks by
    the default JAX backend: cuDNN on GPU, splash on TPU when `length` is a multiple of
    its 128 block (else xla), xla on CPU.
    """
    if config.attention != "auto":
        return config.attention
    backend = jax.default_backend()
    if backend == "gpu":
        return "dot_product_attention"
    if backend == "tpu" and length % SPLASH_BLOCK == 0:
        return "splash"
    return "xla"


def project(x, w, n_contract: int = 1, **dot_kwargs):
    """x[..., c1..cn] @ w[c1..cn, o...] as one 2-D matmul over all leading positions.

    Same result as the einsum, but XLA's CPU backend runs the backward of a
    [B, T, D] x [D, F] einsum ~1.5x slower than the same [B*T, D] x [D, F]
    matmul; on TPU and GPU the reshape is free. On CPU, low-precision inputs
    ask for an fp32 result, rounded once afterwards: XLA's CPU backend runs
    only that form on the bf16 dot-product units (~1.8x its fp32 matmul rate on
    an AVX512-BF16 CPU), while TPU and GPU accumulate in fp32 either way.
    """
    lead, contract, out = x.shape[:x.ndim - n_contract], w.shape[:n_contract], w.shape[n_contract:]
    x_2d = x.reshape((math.prod(lead), math.prod(contract)))
    w_2d = w.reshape((math.prod(contract), math.prod(out)))
    if "preferred_element_type" in dot_kwargs or not _cpu_low_precision(x):
        y_2d = jnp.matmul(x_2d, w_2d, **dot_kwargs)
    else:
        y_2d = jnp.matmul(x_2d, w_2d, preferred_element_type=jnp.float32,
                          **dot_kwargs).astype(jnp.result_type(x, w))
    return y_2d.reshape(lead + out)


def _cpu_low_precision(x) -> bool:
    """Whether a matmul on `x` should ask for an fp32 result (see `project`)."""
    return x.dtype != jnp.float32 and jax.default_backend() == "cpu"


def xla_attention(q_BTHK, k_BSNK, v_BSNK, mask_BTS):
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
    if _cpu_low_precision(v_BSNK):
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
    if jax.default_backend() == "gpu" and q_BTHK.dtype in (jnp.bfloat16, jnp.float16):
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
    if jax.default_backend() != "tpu" and not interpret:
        raise ValueError(f"ModelConfig.attention='splash' needs a TPU (Pallas TPU kernels), but "
                         f"the JAX backend is {jax.default_backend()!r}; set "
                         "--gin.ModelConfig.attention to 'auto', 'xla' or 'dot_product_attention'")
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    b, t, h, k = q_BTHK.shape
    if t % SPLASH_BLOCK:
        raise ValueError(f"ModelConfig.attention='splash' needs a sequence length divisible by "
                         f"{SPLASH_BLOCK}, got {t}; pad the sequences or set "
                         "--gin.ModelConfig.attention='auto' (xla for such lengths)")
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


class Attention(nn.Module):
    """Grouped-query self-attention (MHA when n_kv_heads == n_heads).

    With `kv_cache=(k_BSNK, v_BSNK)` and `cache_meta=(index, filled_BS)` the new keys and
    values are written at slots [index, index + T) and the call returns (out, new kv_cache).
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, x_BTD, positions_BT, segment_ids_BT, kv_cache=None, cache_meta=None):
        cfg = self.config
        d, h, kv, k = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.resolved_head_dim
        wq_DHK = _weight(self, "q_proj", (d, h, k), ("embed", "q_heads", "head_dim"), cfg)
        wk_DNK = _weight(self, "k_proj", (d, kv, k), ("embed", "kv_heads", "head_dim"), cfg)
        wv_DNK = _weight(self, "v_proj", (d, kv, k), ("embed", "kv_heads", "head_dim"), cfg)
        wo_HKD = _weight(self, "o_proj", (h, k, d), ("q_heads", "head_dim", "embed"), cfg)

        q_BTHK = project(x_BTD, wq_DHK)
        k_BSNK = project(x_BTD, wk_DNK)
        v_BSNK = project(x_BTD, wv_DNK)
        q_BTHK = nn.with_logical_constraint(q_BTHK, LAYOUT_BTHK)
        k_BSNK = nn.with_logical_constraint(k_BSNK, LAYOUT_BTNK)
        v_BSNK = nn.with_logical_constraint(v_BSNK, LAYOUT_BTNK)

        cos_BTK, sin_BTK = rope_cos_sin(positions_BT, k, cfg.rope_theta)
        q_BTHK = apply_rope(q_BTHK, cos_BTK, sin_BTK)
        k_BSNK = apply_rope(k_BSNK, cos_BTK, sin_BTK)

        new_cache = None
        if kv_cache is not None:
            index, filled_BS = cache_meta
            k_cache, v_cache = kv_cache
            start = (0, index, 0, 0)
            k_cache = jax.lax.dynamic_update_slice(k_cache, k_BSNK.astype(k_cache.dtype), start)
            v_cache = jax.lax.dynamic_update_slice(v_cache, v_BSNK.astype(v_cache.dtype), start)
            new_cache = (nn.with_logical_constraint(k_cache, LAYOUT_CACHE),
                         nn.with_logical_constraint(v_cache, LAYOUT_CACHE))
            mask_BTS = cache_mask(filled_BS, index, x_BTD.shape[1])
            out_BTHK = xla_attention(q_BTHK, k_cache.astype(q_BTHK.dtype),
                                     v_cache.astype(q_BTHK.dtype), mask_BTS)
        else:
            backend = resolve_attention(cfg, x_BTD.shape[1])
            if backend == "xla":
                out_BTHK = flash_attention.causal_attention(q_BTHK, k_BSNK, v_BSNK,
                                                            attention_mask(segment_ids_BT))
            elif backend == "dot_product_attention":
                out_BTHK = dot_product_attention(q_BTHK, k_BSNK, v_BSNK, segment_ids_BT)
            else:
                out_BTHK = splash_attention(q_BTHK, k_BSNK, v_BSNK, segment_ids_BT)
        out_BTHK = nn.with_logical_constraint(out_BTHK, LAYOUT_BTHK)
        out_BTD = nn.with_logical_constraint(project(out_BTHK, wo_HKD, 2),
                                             LAYOUT_BTD)
        return out_BTD if kv_cache is None else (out_BTD, new_cache)


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x_BTD):
        cfg = self.config
        w_gate_DF = _weight(self, "gate_proj", (cfg.d_model, cfg.mlp_dim), ("embed", "mlp"), cfg)
        w_up_DF = _weight(self, "up_proj", (cfg.d_model, cfg.mlp_dim), ("embed", "mlp"), cfg)
        w_down_FD = _weight(self, "down_proj", (cfg.mlp_dim, cfg.d_model), ("mlp", "embed"), cfg)
        gate_BTF = nn.with_logical_constraint(project(x_BTD, w_gate_DF),
                                              LAYOUT_BTF)
        up_BTF = nn.with_logical_constraint(project(x_BTD, w_up_DF),
                                            LAYOUT_BTF)
        out_BTD = project(nn.silu(gate_BTF) * up_BTF, w_down_FD)
        return nn.with_logical_constraint(out_BTD, LAYOUT_BTD)


class DecoderLayer(nn.Module):
    """Pre-norm block. Returns (x, new kv cache or None) so the same class works under nn.scan."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x_BTD, positions_BT, segment_ids_BT, kv_cache=None, cache_meta=None):
        x_BTD = nn.with_logical_constraint(x_BTD, LAYOUT_BTD)
        attn_in = RMSNorm(self.config, name="attn_norm")(x_BTD)
        attention = Attention(self.config, name="attention")
        new_cache = None
        if kv_cache is None:
            attn_out = attention(attn_in, positions_BT, segment_ids_BT)
        else:
            attn_out, new_cache = attention(attn_in, positions_BT, segment_ids_BT, kv_cache,
                                            cache_meta)
        x_BTD = x_BTD + attn_out
        mlp_in = RMSNorm(self.config, name="mlp_norm")(x_BTD)
        x_BTD = x_BTD + MLP(self.config, name="mlp")(mlp_in)
        return nn.with_logical_constraint(x_BTD, LAYOUT_BTD), new_cache


class Embedder(nn.Module):
    """Token embedding table [V, D]."""

    config: ModelConfig

    @nn.compact
    def __call__(self, tokens_BT):
        cfg = self.config
        init = nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02), ("vocab", "embed"))
        table_VD = self.param("embedding", init, (cfg.vocab_size, cfg.d_model), cfg.params_dtype)
        return jnp.take(table_VD, tokens_BT, axis=0).astype(cfg.compute_dtype)


class LMHead(nn.Module):
    """Owns the untied unembedding kernel [D, V]; the loss reads it via `unembedding`."""

    config: ModelConfig

    @nn.compact
    def __call__(self):
        cfg = self.config
        init = nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02), ("embed", "vocab"))
        return self.param("kernel", init, (cfg.d_model, cfg.vocab_size), cfg.params_dtype)


def _layer_class(config: ModelConfig):
    """DecoderLayer, wrapped in nn.remat according to `config.remat`."""
    if config.remat == "none":
        return DecoderLayer
    policy = {
        "full": jax.checkpoint_policies.nothing_saveable,
        "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    }[config.remat]
    # Under scan the loop boundary already blocks CSE, so prevent_cse would only cost speed.
    return nn.remat(DecoderLayer, policy=policy, prevent_cse=not config.scan_layers)


class Decoder(nn.Module):
    """Token ids -> final-normed hidden states [B, T, D] in the compute dtype.

    With `cache` (from `init_cache`) returns (hidden, new cache): the T tokens go to slots
    [cache["index"], cache["index"] + T); `segment_ids_BT == 0` marks padding that no later
    query sees; `positions_BT` (RoPE) default to the slot numbers.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, tokens_BT, positions_BT=None, segment_ids_BT=None, cache=None):
        cfg = self.config
        batch, length = tokens_BT.shape
        if length > cfg.max_seq_len:
            raise ValueError(f"sequence length {length} exceeds ModelConfig.max_seq_len="
                             f"{cfg.max_seq_len}; raise --gin.ModelConfig.max_seq_len or "
                             "shorten the inputs")
        start = 0 if cache is None else cache["index"]
        if positions_BT is None:
            positions_BT = jnp.broadcast_to(start + jnp.arange(length, dtype=jnp.int32),
                                            (batch, length))
        if segment_ids_BT is None:
            segment_ids_BT = jnp.ones((batch, length), dtype=jnp.int32)

        x_BTD = Embedder(cfg, name="embed")(tokens_BT)
        x_BTD = nn.with_logical_constraint(x_BTD, LAYOUT_BTD)
        # Decoding needs no rematerialisation (no backward pass).
        layer_cls = _layer_class(cfg) if cache is None else DecoderLayer
        args = (positions_BT, segment_ids_BT)
        in_axes = (nn.broadcast, nn.broadcast)
        if cache is not None:
            filled_BS = jax.lax.dynamic_update_slice(cache["filled"], segment_ids_BT != 0,
                                                     (0, start))
            args += ((cache["k"], cache["v"]), (start, filled_BS))
            in_axes += (0, nn.broadcast)
        if cfg.scan_layers:
            scanned = nn.scan(
                layer_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=in_axes,
                length=cfg.n_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x_BTD, new_kv = scanned(cfg, name="layers")(x_BTD, *args)
        else:
            new_kv = []
            for i in range(cfg.n_layers):
                layer_args = args if cache is None else (
                    *args[:2], (cache["k"][i], cache["v"][i]), args[3])
                x_BTD, layer_kv = layer_cls(cfg, name=f"layers_{i}")(x_BTD, *layer_args)
                new_kv.append(layer_kv)
            if cache is not None:
                new_kv = (tuple(k for k, _ in new_kv), tuple(v for _, v in new_kv))
        if not cfg.tie_embeddings:
            LMHead(cfg, name="lm_head")()  # creates params["lm_head"]; unused here, DCE'd by XLA
        hidden_BTD = RMSNorm(cfg, name="final_norm")(x_BTD)
        if cache is None:
            return hidden_BTD
        return hidden_BTD, {"k": new_kv[0], "v": new_kv[1], "filled": filled_BS,
                            "index": start + length}


def init_cache(config: ModelConfig, batch: int, length: int, dtype=None) -> dict:
    """An empty KV cache of `length` slots per row.

    {"k", "v"}: [n_layers, B, S, n_kv_heads, head_dim] when scan_layers, else a tuple of
    n_layers [B, S, n_kv_heads, head_dim] arrays; "filled": [B, S] bool; "index": int32.
    """
    if length > config.max_seq_len:
        raise ValueError(f"a KV cache of {length} slots exceeds ModelConfig.max_seq_len="
                         f"{config.max_seq_len}; generate fewer tokens or raise "
                         "--gin.ModelConfig.max_seq_len")
    dtype = config.compute_dtype if dtype is None else jnp.dtype(dtype)
    shape = (batch, length, config.n_kv_heads, config.resolved_head_dim)
    if config.scan_layers:
        k = v = jnp.zeros((config.n_layers, *shape), dtype)
    else:
        k = v = tuple(jnp.zeros(shape, dtype) for _ in range(config.n_layers))
    return {"k": k, "v": v, "filled": jnp.zeros((batch, length), jnp.bool_),
            "index": jnp.zeros((), jnp.int32)}


def unembedding(params, config: ModelConfig) -> jax.Array:
    """The [D, V] output projection: lm_head kernel, or the embedding transposed when tied."""
    if config.tie_embeddings:
        return params["embed"]["embedding"].T
    return params["lm_head"]["kernel"]


def logits(params, config: ModelConfig, tokens_BT, positions_BT=None,
           segment_ids_BT=None) -> jax.Array:
    """Full fp32 logits [B, T, V]; for tests and generation only (training uses the loss)."""
    hidden_BTD = Decoder(config).apply({"params": params}, tokens_BT, positions_BT,
                                       segment_ids_BT)
    w_DV = unembedding(params, config).astype(hidden_BTD.dtype)
    logits_BTV = jnp.einsum("btd,dv->btv", hidden_BTD, w_DV, preferred_element_type=jnp.float32)
    return nn.with_logical_constraint(logits_BTV, LAYOUT_BTV)


def _boxed_init(config: ModelConfig, rng):
    tokens_BT = jnp.zeros(_DUMMY_TOKENS_SHAPE, dtype=jnp.int32)
    return Decoder(config).init(rng, tokens_BT)["params"]


def init_params(config: ModelConfig, rng):
    """Randomly initialised parameters as plain arrays (logical metadata stripped)."""
    return jax.jit(lambda r: nn.meta.unbox(_boxed_init(config, r)))(rng)


def abstract_params(config: ModelConfig):
    """Parameter shapes/dtypes as jax.ShapeDtypeStruct; allocates nothing."""
    return jax.eval_shape(lambda: nn.meta.unbox(_boxed_init(config, jax.random.key(0))))


def logical_param_specs(config: ModelConfig):
    """PartitionSpecs of logical axis names, one per parameter leaf (same tree as params)."""
    boxed = jax.eval_shape(lambda: _boxed_init(config, jax.random.key(0)))
    return nn.get_partition_spec(boxed)


def count_params(config: ModelConfig) -> int:
    """Total number of parameters, computed from shapes only."""
    leaves = jax.tree_util.tree_leaves(abstract_params(config))
    return int(sum(np.prod(leaf.shape, dtype=np.int64) for leaf in leaves))


def computing_in(config: ModelConfig, dtype: str, binding: str) -> ModelConfig:
    """`config` with its activations and matmuls in `dtype` (the frozen reference's
    forward runs in `reference_dtype`, whatever the student computes in).

    `binding` names the gin binding `dtype` came from, for the error message.
    """
    try:
        return dataclasses.replace(config, dtype=dtype)
    except ValueError as e:
        raise ValueError(f"{binding}={dtype!r} is not a floating dtype name; set "
                         f"--gin.{binding} to e.g. 'bfloat16' or 'float32'") from e
