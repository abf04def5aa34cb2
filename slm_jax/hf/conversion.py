"""Hugging Face Llama/Mistral checkpoints <-> slm-jax orbax checkpoints (the I/O; the
name and shape mapping is slm_jax/hf/mapping.py, the command line slm_jax/convert.py).

`hf_to_orbax` writes `OUT/checkpoints/0/{params,meta}` (what `train.init_checkpoint` and
`ReferenceConfig.checkpoint` load), `OUT/model.gin` (the ModelConfig bindings) and keeps
the HF directory's config, generation config and tokenizer files in `OUT` (so `OUT` is a
`DataConfig.vocab_path`, and `orbax_to_hf` gives them back: slm_jax/hf/hub_files.py). Safetensors files are read one tensor
at a time into preallocated parameter arrays, so the host holds about one copy of the
params (in `param_dtype`) plus one tensor. See docs/convert.md.
"""
from __future__ import annotations

import glob
import json
import os

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, for BF16 safetensors)
import numpy as np

from slm_jax.hf import hub_files
from slm_jax.hf.mapping import (ConversionError, Entry, check_map_covers_model,
                                hf_config_from_model, hf_tensor, leaf_shapes,
                                model_config_from_gin, model_config_from_hf, model_gin, nested,
                                param_map, put_hf_tensor)

CHECKPOINT_SUBDIR = "checkpoints"
STEP = 0
CHUNK_BYTES = 64 << 20   # zarr chunk size of the written params: bounds write buffers
# Non-parameter buffers some older HF checkpoints carry.
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)
_SIZE_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9}


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
    """name -> (file, shape), from the safetensors headers only; a truncated or damaged
    file is refused here, before anything is written."""
    from safetensors import SafetensorError, safe_open
    index = {}
    for path in files:
        try:
            with safe_open(path, framework="numpy") as f:
                for name in f.keys():
                    index[name] = (path, tuple(f.get_slice(name).get_shape()))
        except SafetensorError as e:
            raise ConversionError(f"{path} is not a readable safetensors file ({e}); it is "
                                  "truncated or damaged, download it again") from e
    return index


def read_hf_params(hf_dir: str, cfg) -> dict:
    """The param tree of `cfg` filled from HF safetensors, one tensor at a time."""
    from safetensors import safe_open

    entries = param_map(cfg)
    leaves = leaf_shapes(cfg)
    check_map_covers_model(cfg, entries, leaves)
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
                put_hf_tensor(arrays, e, f.get_tensor(e.hf_name))
    return nested(arrays)


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


def read_hf_config(hf_dir: str) -> tuple[dict, str]:
    """(config.json of an HF directory, its path); refuses a directory without one."""
    config_path = os.path.join(hf_dir, "config.json")
    if not os.path.exists(config_path):
        raise ConversionError(f"{config_path} does not exist; --hf_dir must be a Hugging Face "
                              "model directory (config.json + *.safetensors)")
    with open(config_path) as f:
        return json.load(f), config_path


def hf_to_orbax(hf_dir: str, out: str, *, scan_layers: bool = True,
                param_dtype: str = "float32", max_seq_len: int | None = None):
    """Converts an HF directory of a supported family (slm_jax/hf/mapping.py FAMILIES);
    returns the ModelConfig written to model.gin."""
    hf_dir, out = os.path.abspath(hf_dir), os.path.abspath(out)
    hf, config_path = read_hf_config(hf_dir)
    cfg = model_config_from_hf(hf, scan_layers=scan_layers, param_dtype=param_dtype,
                               max_seq_len=max_seq_len, source=config_path)
    ckpt_dir = os.path.join(out, CHECKPOINT_SUBDIR)
    if os.path.exists(ckpt_dir) and os.listdir(ckpt_dir):
        raise ConversionError(f"{ckpt_dir} already holds checkpoints; choose an empty --out")
    params = read_hf_params(hf_dir, cfg)
    os.makedirs(out, exist_ok=True)
    save_params(params, ckpt_dir, {"source": hf_dir, "architectures": hf.get("architectures"),
                                   "model_type": hf.get("model_type", "llama")})
    del params
    with open(os.path.join(out, "model.gin"), "w") as f:
        f.write(model_gin(cfg, f"Converted from {hf_dir} ({hf['architectures'][0]}) by "
                               "slm_jax.convert hf_to_orbax."))
    hub_files.keep_hub_files(hf_dir, out)
    return cfg


# ---------------------------------------------------------------------------------------
# orbax -> HF

def _parse_size(text: str) -> int:
    text = str(text).strip().upper()
    for unit, scale in _SIZE_UNITS.items():
        if text.endswith(unit):
            return int(float(text[:-len(unit)]) * scale)
    return int(text)


def find_model_gin(ckpt_dir: str) -> list[str]:
    """model.gin (converted) or config.gin (a train run) beside/above the checkpoints."""
    here = os.path.abspath(ckpt_dir)
    for directory in (here, os.path.dirname(here), os.path.dirname(os.path.dirname(here))):
        for name in ("model.gin", "config.gin"):
            if os.path.exists(os.path.join(directory, name)):
                return [os.path.join(directory, name)]
    raise ConversionError(f"no model.gin or config.gin found beside {ckpt_dir}; pass "
                          "--gin_file with the ModelConfig the checkpoint was trained with")


def write_hf(params, cfg, out: str, *, dtype: str = "float32", max_shard_size="2GB",
             tokenizer: str | None = None, source_dir: str | None = None):
    """Writes `params` as HF safetensors shards, one shard in memory at a time, with
    config.json, generation_config.json and tokenizer files (from `source_dir`, the
    model's original HF files, and `tokenizer`)."""
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
        w = np.ascontiguousarray(hf_tensor(params, e).astype(np_dtype))
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
    source = None
    if source_dir and os.path.exists(os.path.join(source_dir, "config.json")):
        with open(os.path.join(source_dir, "config.json")) as f:
            source = json.load(f)
    hub_files.write_hub_files(out, hf_config_from_model(cfg, dtype, source), source_dir,
                              tokenizer)


def restore_cpu_params(ckpt_dir: str, cfg):
    """The params of the latest checkpoint in `ckpt_dir`, on one CPU device (for export)."""
    import jax
    from slm_jax import model as model_lib
    from slm_jax.parallel import checkpoint as ckpt_lib
    abstract = model_lib.abstract_params(cfg)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
    return ckpt_lib.restore_params(ckpt_dir, abstract, jax.tree.map(lambda _: device, abstract),
                                   binding="--ckpt_dir")


def orbax_to_hf(ckpt_dir: str, out: str, cfg=None, *, gin_files: list[str] | None = None,
                dtype: str = "float32", max_shard_size="2GB", tokenizer: str | None = None):
    """Restores the params of the latest checkpoint in `ckpt_dir` (OUT of hf_to_orbax, its
    checkpoints/, a train run_dir or one step) and writes an HF directory."""
    if cfg is None:
        cfg = model_config_from_gin(gin_files or find_model_gin(ckpt_dir))
    params = restore_cpu_params(ckpt_dir, cfg)
    write_hf(params, cfg, out, dtype=dtype, max_shard_size=max_shard_size,
             tokenizer=tokenizer or hub_files.run_tokenizer(ckpt_dir),
             source_dir=hub_files.find_source_dir(ckpt_dir))
    return cfg
