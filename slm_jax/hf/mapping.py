"""The Hugging Face <-> slm-jax mapping: HF config.json <-> ModelConfig, and flax param
path <-> HF tensor name, shape and layout (a table per layer, `param_map`).

No RoPE permutation is needed: `model.decoder.apply_rope` rotates halves of each head
(HF's `rotate_half`), the layout HF Llama q/k weights are already stored in.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np

ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
MODEL_TYPES = ("llama", "mistral")


class ConversionError(ValueError):
    """A checkpoint or config that cannot be converted; the message names the culprit."""


# ---------------------------------------------------------------------------------------
# The mapping: flax param path <-> HF tensor name, HF shape, and whether it is a Linear
# weight ([out, in] in HF, [in, ...out] in flax: transpose, then reshape).

def _layer_table(cfg) -> dict:
    d, h, n, k, f = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.resolved_head_dim, cfg.mlp_dim
    return {
        ("attention", "q_proj"): ("self_attn.q_proj.weight", (h * k, d), True),
        ("attention", "k_proj"): ("self_attn.k_proj.weight", (n * k, d), True),
        ("attention", "v_proj"): ("self_attn.v_proj.weight", (n * k, d), True),
        ("attention", "o_proj"): ("self_attn.o_proj.weight", (d, h * k), True),
        ("mlp", "gate_proj"): ("mlp.gate_proj.weight", (f, d), True),
        ("mlp", "up_proj"): ("mlp.up_proj.weight", (f, d), True),
        ("mlp", "down_proj"): ("mlp.down_proj.weight", (d, f), True),
        ("attn_norm", "scale"): ("input_layernorm.weight", (d,), False),
        ("mlp_norm", "scale"): ("post_attention_layernorm.weight", (d,), False),
    }


@dataclasses.dataclass(frozen=True)
class Entry:
    """One HF tensor and where it lives in the flax param tree."""
    hf_name: str
    hf_shape: tuple[int, ...]
    transpose: bool
    path: tuple[str, ...]      # flax leaf path
    layer: int | None          # index into the stacked leading axis (scan_layers), else None


def param_map(cfg) -> list[Entry]:
    """Every HF tensor of a ModelConfig, in HF's usual order."""
    entries = [Entry("model.embed_tokens.weight", (cfg.vocab_size, cfg.d_model), False,
                     ("embed", "embedding"), None)]
    for i in range(cfg.n_layers):
        for sub, (suffix, shape, transpose) in _layer_table(cfg).items():
            path, layer = (("layers",) + sub, i) if cfg.scan_layers else ((f"layers_{i}",) + sub,
                                                                          None)
            entries.append(Entry(f"model.layers.{i}.{suffix}", shape, transpose, path, layer))
    entries.append(Entry("model.norm.weight", (cfg.d_model,), False, ("final_norm", "scale"),
                         None))
    if not cfg.tie_embeddings:
        entries.append(Entry("lm_head.weight", (cfg.vocab_size, cfg.d_model), True,
                             ("lm_head", "kernel"), None))
    return entries


def leaf_shapes(cfg) -> dict[tuple[str, ...], tuple[tuple[int, ...], np.dtype]]:
    import jax
    from slm_jax import model as model_lib
    flat = jax.tree_util.tree_flatten_with_path(model_lib.abstract_params(cfg))[0]
    return {tuple(p.key for p in path): (tuple(x.shape), np.dtype(x.dtype)) for path, x in flat}


def check_map_covers_model(cfg, entries, leaves):
    mapped = {e.path for e in entries}
    unknown = sorted(set(leaves) - mapped)
    if unknown:
        raise ConversionError(f"the model has parameter {'/'.join(unknown[0])} that the "
                              "converter does not map to a Hugging Face tensor; extend "
                              "slm_jax/hf/mapping.py's param_map")


def hf_to_flax(w: np.ndarray, entry: Entry, flax_shape) -> np.ndarray:
    return w.T.reshape(flax_shape) if entry.transpose else w.reshape(flax_shape)


def flax_to_hf(x: np.ndarray, entry: Entry) -> np.ndarray:
    if entry.transpose:
        return x.reshape(entry.hf_shape[::-1]).T
    return x.reshape(entry.hf_shape)


# ---------------------------------------------------------------------------------------
# HF config.json <-> ModelConfig

def model_config_from_hf(hf: dict, *, scan_layers: bool = True, param_dtype: str = "float32",
                         max_seq_len: int | None = None, source: str = "config.json"):
    """A ModelConfig for an HF Llama/Mistral config dict; refuses what the model cannot run."""
    from slm_jax import model as model_lib

    archs = hf.get("architectures") or []
    if not archs or any(a not in ARCHITECTURES for a in archs):
        raise ConversionError(f"{source}: architectures={archs} is not supported; only "
                              f"{' or '.join(ARCHITECTURES)} convert")
    if hf.get("model_type", "llama") not in MODEL_TYPES:
        raise ConversionError(f"{source}: model_type={hf.get('model_type')!r} is not one of "
                              f"{MODEL_TYPES}")
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size"):
        if not isinstance(hf.get(key), int):
            raise ConversionError(f"{source}: {key} is missing or not an int")
    if hf.get("hidden_act", "silu") != "silu":
        raise ConversionError(f"{source}: hidden_act={hf['hidden_act']!r} is not supported "
                              "(the MLP is SwiGLU with silu)")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise ConversionError(f"{source}: {key}=true is not supported (the model has no "
                                  "biases)")
    rope_theta = hf.get("rope_theta")
    for key in ("rope_scaling", "rope_parameters"):   # transformers<5 / >=5 spelling
        rope = hf.get(key)
        if rope:
            kind = rope.get("rope_type", rope.get("type", "default"))
            if kind != "default":
                raise ConversionError(f"{source}: {key}={json.dumps(rope)} is not supported; "
                                      "only plain RoPE (rope_type 'default') converts")
            rope_theta = rope.get("rope_theta", rope_theta)
    hf_max_len = int(hf.get("max_position_embeddings", 2048))
    max_seq_len = int(max_seq_len or hf_max_len)
    window = hf.get("sliding_window")
    if window is not None and hf.get("use_sliding_window", True) and window < max_seq_len:
        raise ConversionError(
            f"{source}: sliding_window={window} is smaller than the context ({max_seq_len}); "
            "the model only has full attention. Pass --max_seq_len <= "
            f"{window} to convert for contexts where the window never applies")
    n_heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // n_heads
    try:
        return model_lib.ModelConfig(
            vocab_size=hf["vocab_size"], d_model=hf["hidden_size"],
            n_layers=hf["num_hidden_layers"], n_heads=n_heads,
            n_kv_heads=hf.get("num_key_value_heads") or n_heads, head_dim=head_dim,
            mlp_dim=hf["intermediate_size"], rope_theta=float(rope_theta or 10000.0),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            max_seq_len=max_seq_len, param_dtype=param_dtype, scan_layers=scan_layers)
    except ValueError as e:
        raise ConversionError(f"{source}: {e}") from e


def hf_config_from_model(cfg, dtype: str) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.resolved_head_dim,
        "intermediate_size": cfg.mlp_dim, "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta, "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": cfg.tie_embeddings, "attention_bias": False, "mlp_bias": False,
        "torch_dtype": dtype, "dtype": dtype,
    }


def model_gin(cfg, comment: str) -> str:
    fields = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "mlp_dim",
              "rope_theta", "norm_eps", "tie_embeddings", "max_seq_len", "param_dtype",
              "scan_layers")
    lines = [f"# {comment}"] + [f"ModelConfig.{f} = {getattr(cfg, f)!r}" for f in fields]
    return "\n".join(lines) + "\n"


def model_config_from_gin(files: list[str], bindings: list[str] = ()):
    """ModelConfig from gin files (a model.gin, or a run's config.gin: other names ignored)."""
    import gin
    from slm_jax import model as model_lib
    gin.clear_config()
    try:
        gin.parse_config_files_and_bindings(files, list(bindings), skip_unknown=True)
        return model_lib.ModelConfig()
    finally:
        gin.clear_config()
