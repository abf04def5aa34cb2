"""Hugging Face Llama/Mistral checkpoints <-> slm-jax orbax checkpoints.

    python -m slm_jax.convert hf_to_orbax --hf_dir DIR --out OUT [--no-scan_layers]
    python -m slm_jax.convert orbax_to_hf --ckpt_dir OUT/checkpoints --out HF [--gin_file F]

`hf_to_orbax` writes `OUT/checkpoints/0/{params,meta}` (what `train.init_checkpoint` and
`train.reference_checkpoint` load), `OUT/model.gin` (the ModelConfig bindings) and
`OUT/tokenizer.model` when the HF directory has one. Safetensors files are read one tensor
at a time into preallocated parameter arrays, so the host holds about one copy of the
params (in `param_dtype`) plus one tensor.

No RoPE permutation is needed: `model.apply_rope` rotates halves of each head
(HF's `rotate_half`), the layout HF Llama q/k weights are already stored in.
See docs/convert.md. This module defines no gin configurables (it runs as __main__).
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import shutil
import sys

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, for BF16 safetensors)
import numpy as np

from slm_jax import cli_errors

ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
MODEL_TYPES = ("llama", "mistral")
CHECKPOINT_SUBDIR = "checkpoints"
STEP = 0
CHUNK_BYTES = 64 << 20   # zarr chunk size of the written params: bounds write buffers
# Non-parameter buffers some older HF checkpoints carry.
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)
_SIZE_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9}


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


def _leaf_shapes(cfg) -> dict[tuple[str, ...], tuple[tuple[int, ...], np.dtype]]:
    import jax
    from slm_jax import model as model_lib
    flat = jax.tree_util.tree_flatten_with_path(model_lib.abstract_params(cfg))[0]
    return {tuple(p.key for p in path): (tuple(x.shape), np.dtype(x.dtype)) for path, x in flat}


def _check_map_covers_model(cfg, entries, leaves):
    mapped = {e.path for e in entries}
    unknown = sorted(set(leaves) - mapped)
    if unknown:
        raise ConversionError(f"the model has parameter {'/'.join(unknown[0])} that the "
                              "converter does not map to a Hugging Face tensor; extend "
                              "slm_jax/convert.py's param_map")


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


# ---------------------------------------------------------------------------------------
# HF -> orbax

def _safetensors_files(hf_dir: str) -> list[str]:
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        files = sorted(set(weight_map.values()))
        for name in files:
            if not os.path.exists(os.path.join(hf_dir, name)):
                raise ConversionError(f"{index} lists {name}, which is missing from {hf_dir}")
        return [os.path.join(hf_dir, name) for name in files]
    files = sorted(glob.glob(os.path.join(hf_dir, "*.safetensors")))
    if not files:
        raise ConversionError(f"{hf_dir} has no *.safetensors files (PyTorch .bin checkpoints "
                              "are not read; re-save with safe_serialization=True)")
    return files


def _tensor_index(files: list[str]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (file, shape), from the safetensors headers only."""
    from safetensors import safe_open
    index = {}
    for path in files:
        with safe_open(path, framework="numpy") as f:
            for name in f.keys():
                index[name] = (path, tuple(f.get_slice(name).get_shape()))
    return index


def read_hf_params(hf_dir: str, cfg) -> dict:
    """The param tree of `cfg` filled from HF safetensors, one tensor at a time."""
    from safetensors import safe_open

    entries = param_map(cfg)
    leaves = _leaf_shapes(cfg)
    _check_map_covers_model(cfg, entries, leaves)
    index = _tensor_index(_safetensors_files(hf_dir))
    where = {name: path for name, (path, _) in index.items()}
    missing = [e.hf_name for e in entries if e.hf_name not in where]
    if missing:
        raise ConversionError(f"tensor {missing[0]} is missing from {hf_dir}"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    expected = {e.hf_name for e in entries}
    if cfg.tie_embeddings:
        expected.add("lm_head.weight")     # some tied checkpoints still store the copy
    unexpected = sorted(n for n in where if n not in expected
                        and not n.endswith(_IGNORED_SUFFIXES))
    if unexpected:
        raise ConversionError(f"unexpected tensor {unexpected[0]} in {where[unexpected[0]]}"
                              + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1
                                 else "") + "; the model has no such parameter (biases, "
                              "other architectures)")
    for e in entries:   # all shapes checked before any tensor is read
        path, shape = index[e.hf_name]
        if shape != e.hf_shape:
            raise ConversionError(f"tensor {e.hf_name} in {path} has shape {list(shape)}, "
                                  f"expected {list(e.hf_shape)} from config.json")

    arrays = {path: np.empty(shape, dtype) for path, (shape, dtype) in leaves.items()}
    by_file: dict[str, list[Entry]] = {}
    for e in entries:
        by_file.setdefault(where[e.hf_name], []).append(e)
    for path, file_entries in by_file.items():
        with safe_open(path, framework="numpy") as f:
            for e in file_entries:
                dest = arrays[e.path]
                if e.layer is None:
                    dest[...] = hf_to_flax(f.get_tensor(e.hf_name), e, dest.shape)
                else:
                    dest[e.layer] = hf_to_flax(f.get_tensor(e.hf_name), e, dest.shape[1:])
    tree: dict = {}
    for path, array in arrays.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = array
    return tree


def save_params(params, ckpt_dir: str, meta: dict):
    """Writes a tree of numpy arrays as step 0 of an orbax CheckpointManager directory.

    `restore_params` reads it like a `train` checkpoint. Three settings keep the write
    from adding to the host memory (1.1B fp32: peak 10.3 -> 4.8 GiB, docs/convert.md): the
    numpy handler does not deep-copy the arrays first (orbax's default, for async saves),
    plain zarr instead of OCDBT (whose writer buffers the compressed output), and 64 MB
    chunks instead of one per array.
    """
    import jax
    import orbax.checkpoint as ocp
    registry = ocp.type_handlers.create_type_handler_registry(
        (np.ndarray, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False)))
    manager = ocp.CheckpointManager(
        os.path.abspath(ckpt_dir),
        options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False),
        item_handlers={"params": ocp.PyTreeCheckpointHandler(
            type_handler_registry=registry, use_ocdbt=False, save_concurrent_gb=1),
                       "meta": ocp.JsonCheckpointHandler()})
    try:
        manager.save(STEP, args=ocp.args.Composite(
            params=ocp.args.PyTreeSave(params, save_args=jax.tree.map(
                lambda _: ocp.SaveArgs(chunk_byte_size=CHUNK_BYTES), params)),
            meta=ocp.args.JsonSave({"step": STEP, **meta})), force=True)
        manager.wait_until_finished()
    finally:
        manager.close()


def hf_to_orbax(hf_dir: str, out: str, *, scan_layers: bool = True,
                param_dtype: str = "float32", max_seq_len: int | None = None):
    """Converts an HF Llama/Mistral directory; returns the ModelConfig written to model.gin."""
    hf_dir, out = os.path.abspath(hf_dir), os.path.abspath(out)
    config_path = os.path.join(hf_dir, "config.json")
    if not os.path.exists(config_path):
        raise ConversionError(f"{config_path} does not exist; --hf_dir must be a Hugging Face "
                              "model directory (config.json + *.safetensors)")
    with open(config_path) as f:
        hf = json.load(f)
    cfg = model_config_from_hf(hf, scan_layers=scan_layers, param_dtype=param_dtype,
                               max_seq_len=max_seq_len, source=config_path)
    ckpt_dir = os.path.join(out, CHECKPOINT_SUBDIR)
    if os.path.exists(ckpt_dir) and os.listdir(ckpt_dir):
        raise ConversionError(f"{ckpt_dir} already holds checkpoints; choose an empty --out")
    params = read_hf_params(hf_dir, cfg)
    os.makedirs(out, exist_ok=True)
    save_params(params, ckpt_dir, {"source": hf_dir, "architectures": hf.get("architectures")})
    del params
    with open(os.path.join(out, "model.gin"), "w") as f:
        f.write(model_gin(cfg, f"Converted from {hf_dir} ({hf['architectures'][0]}) by "
                               "slm_jax.convert hf_to_orbax."))
    tokenizer = os.path.join(hf_dir, "tokenizer.model")
    if os.path.exists(tokenizer):
        shutil.copy(tokenizer, os.path.join(out, "tokenizer.model"))
    return cfg


# ---------------------------------------------------------------------------------------
# orbax -> HF

def _parse_size(text: str) -> int:
    text = str(text).strip().upper()
    for unit, scale in _SIZE_UNITS.items():
        if text.endswith(unit):
            return int(float(text[:-len(unit)]) * scale)
    return int(text)


def _find_model_gin(ckpt_dir: str) -> list[str]:
    """model.gin (converted) or config.gin (a train run) beside/above the checkpoints."""
    here = os.path.abspath(ckpt_dir)
    for directory in (here, os.path.dirname(here), os.path.dirname(os.path.dirname(here))):
        for name in ("model.gin", "config.gin"):
            if os.path.exists(os.path.join(directory, name)):
                return [os.path.join(directory, name)]
    raise ConversionError(f"no model.gin or config.gin found beside {ckpt_dir}; pass "
                          "--gin_file with the ModelConfig the checkpoint was trained with")


def write_hf(params, cfg, out: str, *, dtype: str = "float32", max_shard_size="2GB",
             tokenizer: str | None = None):
    """Writes `params` as HF safetensors shards + config.json, one shard in memory at a time."""
    from safetensors.numpy import save_file

    np_dtype = np.dtype(dtype)
    limit = _parse_size(max_shard_size)
    os.makedirs(out, exist_ok=True)
    shards: list[list[str]] = []
    pending: dict[str, np.ndarray] = {}
    pending_bytes, total_bytes = 0, 0
    tmp_names = []

    def flush():
        nonlocal pending, pending_bytes
        if pending:
            name = os.path.join(out, f".shard-{len(tmp_names)}.safetensors")
            save_file(pending, name, metadata={"format": "pt"})
            tmp_names.append(name)
            shards.append(list(pending))
            pending, pending_bytes = {}, 0

    for e in param_map(cfg):
        node = params
        for key in e.path:
            node = node[key]
        x = np.asarray(node if e.layer is None else node[e.layer])
        w = np.ascontiguousarray(flax_to_hf(x, e).astype(np_dtype))
        if pending and pending_bytes + w.nbytes > limit:
            flush()
        pending[e.hf_name] = w
        pending_bytes += w.nbytes
        total_bytes += w.nbytes
    flush()

    if len(tmp_names) == 1:
        os.replace(tmp_names[0], os.path.join(out, "model.safetensors"))
    else:
        weight_map = {}
        for i, (tmp, names) in enumerate(zip(tmp_names, shards)):
            final = f"model-{i + 1:05d}-of-{len(tmp_names):05d}.safetensors"
            os.replace(tmp, os.path.join(out, final))
            weight_map.update({n: final for n in names})
        with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total_bytes}, "weight_map": weight_map}, f,
                      indent=2)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(hf_config_from_model(cfg, dtype), f, indent=2)
    if tokenizer:
        if not os.path.exists(tokenizer):
            raise ConversionError(f"--tokenizer {tokenizer} does not exist")
        shutil.copy(tokenizer, os.path.join(out, "tokenizer.model"))


def orbax_to_hf(ckpt_dir: str, out: str, cfg=None, *, gin_files: list[str] | None = None,
                dtype: str = "float32", max_shard_size="2GB", tokenizer: str | None = None):
    """Restores the params of the latest checkpoint in `ckpt_dir` and writes an HF directory."""
    import jax
    from slm_jax import checkpoint as ckpt_lib
    from slm_jax import model as model_lib

    if cfg is None:
        cfg = model_config_from_gin(gin_files or _find_model_gin(ckpt_dir))
    abstract = model_lib.abstract_params(cfg)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
    params = ckpt_lib.restore_params(ckpt_dir, abstract, jax.tree.map(lambda _: device, abstract),
                                     binding="--ckpt_dir")
    write_hf(params, cfg, out, dtype=dtype, max_shard_size=max_shard_size, tokenizer=tokenizer)
    return cfg


# ---------------------------------------------------------------------------------------
# CLI

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m slm_jax.convert", description=__doc__.split(
        "\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("hf_to_orbax", help="HF Llama/Mistral safetensors -> orbax checkpoint")
    a.add_argument("--hf_dir", required=True)
    a.add_argument("--out", required=True)
    a.add_argument("--scan_layers", action=argparse.BooleanOptionalAction, default=True,
                   help="stacked layer params (as gin/runs/*.gin train with); default on")
    a.add_argument("--param_dtype", default="float32")
    a.add_argument("--max_seq_len", type=int, default=None,
                   help="ModelConfig.max_seq_len (default: max_position_embeddings)")
    b = sub.add_parser("orbax_to_hf", help="orbax checkpoint -> HF LlamaForCausalLM directory")
    b.add_argument("--ckpt_dir", required=True, help="checkpoints/ dir or one step's dir")
    b.add_argument("--out", required=True)
    b.add_argument("--gin_file", action="append", default=None,
                   help="ModelConfig gin (default: model.gin/config.gin beside the checkpoints)")
    b.add_argument("--gin", action="append", default=[], help="extra binding, e.g. "
                   "ModelConfig.scan_layers=True")
    b.add_argument("--tokenizer", default=None, help="tokenizer.model to copy beside")
    b.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    b.add_argument("--max_shard_size", default="2GB")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "hf_to_orbax":
            cfg = hf_to_orbax(args.hf_dir, args.out, scan_layers=args.scan_layers,
                              param_dtype=args.param_dtype, max_seq_len=args.max_seq_len)
            out = os.path.abspath(args.out)
            print(f"wrote {os.path.join(out, CHECKPOINT_SUBDIR)} ({cfg.n_layers} layers) and "
                  f"{os.path.join(out, 'model.gin')}; use --gin_file={out}/model.gin "
                  f"--gin.train.init_checkpoint={out}/{CHECKPOINT_SUBDIR}")
        else:
            gin_files = args.gin_file or _find_model_gin(args.ckpt_dir)
            cfg = model_config_from_gin(gin_files, args.gin)
            orbax_to_hf(args.ckpt_dir, args.out, cfg, dtype=args.dtype,
                        max_shard_size=args.max_shard_size, tokenizer=args.tokenizer)
            print(f"wrote {os.path.abspath(args.out)} (LlamaForCausalLM, {args.dtype})")
    except (ValueError, OSError) as e:
        return cli_errors.report("slm_jax.convert", e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
