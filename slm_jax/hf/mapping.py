"""The Hugging Face <-> slm-jax mapping: HF config.json <-> ModelConfig, and flax param
path <-> HF tensor name, shape and layout (a table per layer, `param_map`).

Families: Llama (incl. Llama-3.x rope_scaling "llama3"; SmolLM2 is Llama with tied
embeddings), Mistral, Qwen2/2.5 (q/k/v biases), Qwen3 (q/k RMSNorm, explicit head_dim).

No RoPE permutation is needed: `model.decoder.apply_rope` rotates halves of each head
(HF's `rotate_half`), the layout HF Llama q/k weights are already stored in.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np

# model_type -> (architecture, what it adds to the Llama block)
FAMILIES = {
    "llama": ("LlamaForCausalLM", {}),
    "mistral": ("MistralForCausalLM", {}),
    "qwen2": ("Qwen2ForCausalLM", {"qkv_bias": True}),
    "qwen3": ("Qwen3ForCausalLM", {"qk_norm": True}),
}
ARCHITECTURES = tuple(arch for arch, _ in FAMILIES.values())
MODEL_TYPES = tuple(FAMILIES)


class ConversionError(ValueError):
    """A checkpoint or config that cannot be converted; the message names the culprit."""


# ---------------------------------------------------------------------------------------
# The mapping: flax param path <-> HF tensor name, HF shape, and whether it is a Linear
# weight ([out, in] in HF, [in, ...out] in flax: transpose, then reshape).

def _layer_table(cfg) -> dict:
    d, h, n, k, f = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.resolved_head_dim, cfg.mlp_dim
    table = {
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
    if cfg.qkv_bias:
        table[("attention", "q_bias")] = ("self_attn.q_proj.bias", (h * k,), False)
        table[("attention", "k_bias")] = ("self_attn.k_proj.bias", (n * k,), False)
        table[("attention", "v_bias")] = ("self_attn.v_proj.bias", (n * k,), False)
    if cfg.qk_norm:
        table[("attention", "q_norm", "scale")] = ("self_attn.q_norm.weight", (k,), False)
        table[("attention", "k_norm", "scale")] = ("self_attn.k_norm.weight", (k,), False)
    return table


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


def hf_tensor(params, entry: Entry, dtype=None) -> np.ndarray:
    """The HF tensor of `entry`, read from a flax param tree."""
    node = params
    for key in entry.path:
        node = node[key]
    return flax_to_hf(np.asarray(node if entry.layer is None else node[entry.layer], dtype), entry)


def put_hf_tensor(arrays: dict, entry: Entry, w: np.ndarray) -> None:
    """Writes the HF tensor `w` of `entry` into the preallocated leaf arrays (by flax path)."""
    dest = arrays[entry.path]
    if entry.layer is None:
        dest[...] = hf_to_flax(w, entry, dest.shape)
    else:
        dest[entry.layer] = hf_to_flax(w, entry, dest.shape[1:])


def nested(arrays: dict) -> dict:
    """{flax path: array} as the nested param tree."""
    tree: dict = {}
    for path, array in arrays.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = array
    return tree


# ---------------------------------------------------------------------------------------
# HF config.json <-> ModelConfig

def _family(hf: dict, source: str) -> tuple[str, dict]:
    """(model_type, ModelConfig fields the family adds); refuses unknown architectures."""
    archs = hf.get("architectures") or []
    model_type = hf.get("model_type", "llama")
    if model_type not in FAMILIES:
        raise ConversionError(f"{source}: model_type={model_type!r} is not supported; "
                              f"supported: {', '.join(MODEL_TYPES)}")
    arch, extra = FAMILIES[model_type]
    if not archs or any(a != arch for a in archs):
        raise ConversionError(f"{source}: architectures={archs} is not supported for "
                              f"model_type {model_type!r}; expected [{arch!r}]")
    if model_type == "qwen3" and hf.get("attention_bias"):
        raise ConversionError(f"{source}: attention_bias=true is not supported for Qwen3")
    if model_type in ("llama", "mistral"):
        for key in ("attention_bias", "mlp_bias"):
            if hf.get(key):
                raise ConversionError(f"{source}: {key}=true is not supported (Llama/Mistral "
                                      "here have no biases)")
    return model_type, dict(extra)


def _rope_fields(hf: dict, source: str) -> dict:
    """rope_theta and the llama3 scaling fields, from either transformers spelling."""
    fields = {"rope_theta": float(hf.get("rope_theta") or 10000.0)}
    for key in ("rope_scaling", "rope_parameters"):   # transformers<5 / >=5 spelling
        rope = hf.get(key)
        if not rope:
            continue
        kind = rope.get("rope_type", rope.get("type", "default"))
        fields["rope_theta"] = float(rope.get("rope_theta", fields["rope_theta"]))
        if kind == "llama3":
            keys = ("factor", "low_freq_factor", "high_freq_factor",
                    "original_max_position_embeddings")
            missing = [k for k in keys if not isinstance(rope.get(k), (int, float))]
            if missing:
                raise ConversionError(f"{source}: {key} of rope_type 'llama3' lacks "
                                      f"{', '.join(missing)}")
            fields.update(rope_type="llama3", rope_factor=float(rope["factor"]),
                          rope_low_freq_factor=float(rope["low_freq_factor"]),
                          rope_high_freq_factor=float(rope["high_freq_factor"]),
                          rope_original_max_len=int(rope["original_max_position_embeddings"]))
        elif kind != "default":
            raise ConversionError(f"{source}: {key}={json.dumps(rope)} is not supported; "
                                  "rope_type 'default' and 'llama3' convert")
    return fields


def _check_window(hf: dict, max_seq_len: int, source: str):
    window = hf.get("sliding_window")
    uses_window = hf.get("use_sliding_window", True)
    if window is not None and uses_window and window < max_seq_len:
        raise ConversionError(
            f"{source}: sliding_window={window} is smaller than the context ({max_seq_len}); "
            "the model only has full attention. Pass --max_seq_len <= "
            f"{window} to convert for contexts where the window never applies")


def model_config_from_hf(hf: dict, *, scan_layers: bool = True, param_dtype: str = "float32",
                         max_seq_len: int | None = None, source: str = "config.json"):
    """A ModelConfig for an HF config dict of a supported family; refuses what the model
    cannot run."""
    from slm_jax import model as model_lib

    _, family_fields = _family(hf, source)
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size"):
        if not isinstance(hf.get(key), int):
            raise ConversionError(f"{source}: {key} is missing or not an int")
    if hf.get("hidden_act", "silu") != "silu":
        raise ConversionError(f"{source}: hidden_act={hf['hidden_act']!r} is not supported "
                              "(the MLP is SwiGLU with silu)")
    max_seq_len = int(max_seq_len or hf.get("max_position_embeddings", 2048))
    _check_window(hf, max_seq_len, source)
    n_heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // n_heads
    try:
        return model_lib.ModelConfig(
            vocab_size=hf["vocab_size"], d_model=hf["hidden_size"],
            n_layers=hf["num_hidden_layers"], n_heads=n_heads,
            n_kv_heads=hf.get("num_key_value_heads") or n_heads, head_dim=head_dim,
            mlp_dim=hf["intermediate_size"], norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            max_seq_len=max_seq_len, param_dtype=param_dtype, scan_layers=scan_layers,
            **_rope_fields(hf, source), **family_fields)
    except ValueError as e:
        raise ConversionError(f"{source}: {e}") from e


def model_type_of(cfg) -> str:
    """The HF family a ModelConfig exports as when no source config.json is known."""
    if cfg.qk_norm:
        return "qwen3"
    return "qwen2" if cfg.qkv_bias else "llama"


def _rope_parameters(cfg) -> dict:
    rope = {"rope_type": cfg.rope_type, "rope_theta": cfg.rope_theta}
    if cfg.rope_type == "llama3":
        rope.update(factor=cfg.rope_factor, low_freq_factor=cfg.rope_low_freq_factor,
                    high_freq_factor=cfg.rope_high_freq_factor,
                    original_max_position_embeddings=cfg.rope_original_max_len)
    return rope


def hf_config_from_model(cfg, dtype: str, source: dict | None = None) -> dict:
    """config.json for `cfg`. `source` (the config.json the checkpoint was converted from)
    keeps its family, special token ids and other keys; the shape keys come from `cfg`."""
    import transformers
    hf = dict(source or {})
    model_type = hf.get("model_type") if hf.get("model_type") in FAMILIES else model_type_of(cfg)
    hf.pop("quantization_config", None)
    hf.pop("rope_scaling", None)
    hf.update({
        "architectures": [FAMILIES[model_type][0]], "model_type": model_type,
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.resolved_head_dim,
        "intermediate_size": cfg.mlp_dim, "hidden_act": "silu",
        "max_position_embeddings": max(cfg.max_seq_len, hf.get("max_position_embeddings", 0)),
        "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
        "rope_parameters": _rope_parameters(cfg),
        "tie_word_embeddings": cfg.tie_embeddings,
        "torch_dtype": dtype, "dtype": dtype, "transformers_version": transformers.__version__,
    })
    if model_type in ("llama", "qwen3"):
        hf.update(attention_bias=False)
    if model_type == "llama":
        hf.update(mlp_bias=False)
    if model_type in ("mistral", "qwen2", "qwen3"):
        hf.setdefault("sliding_window", None)
    if model_type in ("qwen2", "qwen3"):
        hf.setdefault("use_sliding_window", False)
    return hf


def model_gin(cfg, comment: str) -> str:
    fields = ["vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "mlp_dim",
              "rope_theta", "norm_eps", "tie_embeddings", "max_seq_len", "param_dtype",
              "scan_layers", "qkv_bias", "qk_norm", "rope_type"]
    if cfg.rope_type != "default":
        fields += ["rope_factor", "rope_low_freq_factor", "rope_high_freq_factor",
                   "rope_original_max_len"]
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
