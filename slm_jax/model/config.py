"""ModelConfig (architecture and numerics of the decoder) and the logical axis names
that params and activations carry; a mesh rule table (slm_jax/parallel/mesh.py) maps
them onto devices.
"""
from __future__ import annotations

import dataclasses

import gin
import jax.numpy as jnp

REMAT_POLICIES = ("none", "full", "dots")
ROPE_TYPES = ("default", "llama3")
ATTENTION_BACKENDS = ("auto", "xla", "dot_product_attention", "splash")

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
    # RoPE frequency scaling: "llama3" is Llama-3.1/3.2's (HF rope_type "llama3").
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_len: int = 8192
    qkv_bias: bool = False      # Qwen2/2.5: biases on the q, k, v projections
    qk_norm: bool = False       # Qwen3: RMSNorm over head_dim of q and k, before RoPE
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    max_seq_len: int = 2048
    dtype: str = "bfloat16"
    param_dtype: str = "float32"
    remat: str = "none"
    scan_layers: bool = False
    attention: str = "auto"
    # Tokens per chunk of the cross-entropy (slm/losses.py): [B, chunk, V] fp32 logits at a
    # time instead of [B, T, V]; 0 keeps the full logits (small vocabularies).
    loss_chunk_size: int = 1024

    def __post_init__(self):
        for field in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_dim",
                      "max_seq_len"):
            value = getattr(self, field)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"ModelConfig.{field}={value!r} must be a positive int; "
                                 f"set ModelConfig.{field} to one")
        if (isinstance(self.loss_chunk_size, bool) or not isinstance(self.loss_chunk_size, int)
                or self.loss_chunk_size < 0):
            raise ValueError(f"ModelConfig.loss_chunk_size={self.loss_chunk_size!r} must be an "
                             "int >= 0 (0: no chunking); set ModelConfig.loss_chunk_size to "
                             "e.g. 1024")
        if self.n_heads % self.n_kv_heads != 0:
            raise ValueError(f"ModelConfig.n_heads={self.n_heads} is not divisible by "
                             f"ModelConfig.n_kv_heads={self.n_kv_heads}; set "
                             "ModelConfig.n_kv_heads to a divisor of n_heads")
        if self.head_dim is None and self.d_model % self.n_heads != 0:
            raise ValueError(f"ModelConfig.d_model={self.d_model} is not divisible by "
                             f"ModelConfig.n_heads={self.n_heads}; set ModelConfig.head_dim "
                             "explicitly or change n_heads")
        if self.resolved_head_dim <= 0 or self.resolved_head_dim % 2 != 0:
            raise ValueError(f"ModelConfig.head_dim={self.resolved_head_dim} must be a positive "
                             "even int (RoPE rotates halves); set ModelConfig.head_dim "
                             "to one")
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"ModelConfig.attention={self.attention!r} is not one of "
                             f"{ATTENTION_BACKENDS}; set ModelConfig.attention to one "
                             "of them")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"ModelConfig.remat={self.remat!r} is not one of {REMAT_POLICIES}; "
                             "set ModelConfig.remat to one of them")
        for field in ("dtype", "param_dtype"):
            value = getattr(self, field)
            try:
                parsed = jnp.dtype(value)
            except TypeError:
                parsed = None
            if parsed is None or not jnp.issubdtype(parsed, jnp.floating):
                raise ValueError(f"ModelConfig.{field}={value!r} is not a floating dtype name; set "
                                 f"ModelConfig.{field} to e.g. 'bfloat16' or 'float32'")
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"ModelConfig.rope_type={self.rope_type!r} is not one of "
                             f"{ROPE_TYPES}; set ModelConfig.rope_type to one of them")
        if self.rope_type == "llama3" and not (
                self.rope_factor >= 1 and self.rope_high_freq_factor > self.rope_low_freq_factor > 0
                and self.rope_original_max_len > 0):
            raise ValueError(
                f"ModelConfig rope_type='llama3' needs rope_factor >= 1 (got {self.rope_factor}), "
                f"rope_high_freq_factor > rope_low_freq_factor > 0 (got "
                f"{self.rope_high_freq_factor}, {self.rope_low_freq_factor}) and "
                f"rope_original_max_len > 0 (got {self.rope_original_max_len}); fix the "
                "ModelConfig.rope_* bindings")
        if self.rope_theta <= 0 or self.norm_eps <= 0:
            raise ValueError(f"ModelConfig.rope_theta={self.rope_theta} and ModelConfig.norm_eps="
                             f"{self.norm_eps} must be positive; fix ModelConfig.rope_theta/norm_eps")

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


def computing_in(config: ModelConfig, dtype: str, binding: str) -> ModelConfig:
    """`config` with its activations and matmuls in `dtype` (the frozen reference's
    forward runs in `reference_dtype`, whatever the student computes in).

    `binding` names the gin binding `dtype` came from, for the error message.
    """
    try:
        return dataclasses.replace(config, dtype=dtype)
    except ValueError as e:
        raise ValueError(f"{binding}={dtype!r} is not a floating dtype name; set "
                         f"{binding} to e.g. 'bfloat16' or 'float32'") from e
