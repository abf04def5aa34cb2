"""Llama-family decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU) in flax.linen.

The decoder returns final-normed hidden states, not logits: the loss projects onto the
vocabulary in chunks (see `slm_jax.slm.losses`) so [B, T, V] fp32 logits never exist at
once. Every parameter carries logical axis names and activations carry logical sharding
constraints (slm_jax/model/config.py); both are no-ops unless `nn.logical_axis_rules` are
active. The attention kernels live in slm_jax/model/attention.py.

Decoding with a KV cache: `init_cache` + `Decoder(config).apply(..., cache=cache)`
returns (hidden, new cache). The cache has one slot per position of a fixed
[B, S] buffer; a call writes its T tokens at slots [index, index + T) and each
query sees the filled slots at or before its own. Positions (RoPE) are per
row, so left- and right-padded prompts both work (see slm_jax/model/generate.py).
"""
from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from slm_jax.model import attention as attn
from slm_jax.model.config import (LAYOUT_BTD, LAYOUT_BTF, LAYOUT_BTHK, LAYOUT_BTNK, LAYOUT_BTV,
                                  LAYOUT_CACHE, ModelConfig)

# Any fixed shape works: parameter shapes do not depend on batch or length.
_DUMMY_TOKENS_SHAPE = (1, 8)


def _weight(module: nn.Module, name: str, shape: tuple[int, ...], names: tuple[str, ...],
            config: ModelConfig) -> jax.Array:
    """A normal(0.02) weight with logical axis names, cast to the compute dtype."""
    init = nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02), names)
    w = module.param(name, init, shape, config.params_dtype)
    return jnp.asarray(w, config.compute_dtype)


def _bias(module: nn.Module, name: str, shape: tuple[int, ...], names: tuple[str, ...],
          config: ModelConfig) -> jax.Array:
    """A zero-initialised bias with logical axis names, cast to the compute dtype."""
    init = nn.with_logical_partitioning(nn.initializers.zeros, names)
    return jnp.asarray(module.param(name, init, shape, config.params_dtype), config.compute_dtype)


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


def rope_inv_freq(config: ModelConfig) -> jax.Array:
    """RoPE inverse frequencies [head_dim / 2], with Llama-3's scaling when configured.

    llama3 scaling divides the low frequencies (wavelength > original context / low
    factor) by `rope_factor`, keeps the high ones, and interpolates smoothly between.
    """
    head_dim = config.resolved_head_dim
    inv_freq_F = 1.0 / (config.rope_theta
                        ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    if config.rope_type == "default":
        return inv_freq_F
    original, factor = config.rope_original_max_len, config.rope_factor
    low, high = config.rope_low_freq_factor, config.rope_high_freq_factor
    wavelen_F = 2 * math.pi / inv_freq_F
    smooth_F = (original / wavelen_F - low) / (high - low)
    interpolated_F = (1 - smooth_F) * inv_freq_F / factor + smooth_F * inv_freq_F
    scaled_F = jnp.where(wavelen_F > original / low, inv_freq_F / factor, inv_freq_F)
    is_medium_F = (wavelen_F >= original / high) & (wavelen_F <= original / low)
    return jnp.where(is_medium_F, interpolated_F, scaled_F)


def rope_cos_sin(positions_BT: jax.Array, inv_freq_F: jax.Array):
    """cos/sin tables [B, T, head_dim] in the Hugging Face Llama (non-interleaved) layout."""
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
    if "preferred_element_type" in dot_kwargs or not attn.cpu_low_precision(x):
        y_2d = jnp.matmul(x_2d, w_2d, **dot_kwargs)
    else:
        y_2d = jnp.matmul(x_2d, w_2d, preferred_element_type=jnp.float32,
                          **dot_kwargs).astype(jnp.result_type(x, w))
    return y_2d.reshape(lead + out)


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
        if cfg.qkv_bias:
            q_BTHK = q_BTHK + _bias(self, "q_bias", (h, k), ("q_heads", "head_dim"), cfg)
            k_BSNK = k_BSNK + _bias(self, "k_bias", (kv, k), ("kv_heads", "head_dim"), cfg)
            v_BSNK = v_BSNK + _bias(self, "v_bias", (kv, k), ("kv_heads", "head_dim"), cfg)
        if cfg.qk_norm:
            q_BTHK = RMSNorm(cfg, name="q_norm")(q_BTHK)
            k_BSNK = RMSNorm(cfg, name="k_norm")(k_BSNK)
        q_BTHK = nn.with_logical_constraint(q_BTHK, LAYOUT_BTHK)
        k_BSNK = nn.with_logical_constraint(k_BSNK, LAYOUT_BTNK)
        v_BSNK = nn.with_logical_constraint(v_BSNK, LAYOUT_BTNK)

        cos_BTK, sin_BTK = rope_cos_sin(positions_BT, rope_inv_freq(cfg))
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
            mask_BTS = attn.cache_mask(filled_BS, index, x_BTD.shape[1])
            out_BTHK = attn.masked_attention(q_BTHK, k_cache.astype(q_BTHK.dtype),
                                             v_cache.astype(q_BTHK.dtype), mask_BTS)
        else:
            out_BTHK = attn.attend(cfg, q_BTHK, k_BSNK, v_BSNK, segment_ids_BT)
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
                             f"{cfg.max_seq_len}; raise ModelConfig.max_seq_len or "
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
                         "ModelConfig.max_seq_len")
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
    # Params do not depend on the attention kernel, and splash could not run on the dummy
    # tokens (8 is no multiple of its block, 1 row does not split over the fsdp axis).
    init_config = dataclasses.replace(config, attention="xla")
    return Decoder(init_config).init(rng, tokens_BT)["params"]


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

