"""slm-jax params -> a GGUF file (llama.cpp's format), as llama.cpp's own converter lays it out.

    orbax_to_gguf(ckpt_dir, out, type="q8_0")    # a converted model, a train run, one step
    hf_to_gguf(hf_dir, out, type="q8_0")         # an exported Hugging Face directory

Architectures as llama.cpp names them: `llama` (Llama-2/3, Mistral, SmolLM2), `qwen2` (q/k/v
biases), `qwen3` (q/k norms). Tensor types (docs/convert.md): 1-D tensors (norms, biases) stay
F32; below Q8_0 the token embedding and output matrix are written at Q8_0; the rest at the named
type; a tensor whose rows are not whole quantization blocks falls back to F16, as llama.cpp's
converter does. `type_like` takes every tensor's type from another GGUF file instead.

The file is written one tensor at a time (tensor infos first, from shapes alone), so the host
holds the params plus one quantized tensor; it is written to `out + '.partial'` and renamed
when complete, so a refusal or a failure leaves no file at `out`.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from slm_jax.hf import hub_files
from slm_jax.hf.gguf_vocab import add_tokenizer, tokenizer_directory
from slm_jax.hf.mapping import ConversionError, Entry, hf_tensor, model_type_of, param_map

# --type -> (ggml type, llama.cpp's file type); the eight the gguf package quantizes in NumPy.
TYPES = {"f32": ("F32", "ALL_F32"), "f16": ("F16", "MOSTLY_F16"),
         "bf16": ("BF16", "MOSTLY_BF16"), "q8_0": ("Q8_0", "MOSTLY_Q8_0"),
         "q5_1": ("Q5_1", "MOSTLY_Q5_1"), "q5_0": ("Q5_0", "MOSTLY_Q5_0"),
         "q4_1": ("Q4_1", "MOSTLY_Q4_1"), "q4_0": ("Q4_0", "MOSTLY_Q4_0")}
BELOW_Q8_0 = ("q5_1", "q5_0", "q4_1", "q4_0")
K_QUANTS = ("q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m",
            "q6_k", "q3_k", "q4_k", "q5_k", "iq2_xxs", "iq2_xs", "iq3_xxs", "iq4_nl", "iq4_xs")
# HF model_type -> llama.cpp architecture
ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}


def check_type(name: str) -> str:
    """The --type, lower-cased, or a refusal naming what to do instead."""
    key = name.lower()
    if key in TYPES:
        return key
    if key in K_QUANTS:
        raise ConversionError(
            f"--type {name} is a K-quant, which the gguf package cannot write; write --type f16 "
            f"(or q8_0) here and quantize that file with llama.cpp: llama-quantize in.gguf "
            f"out.gguf {name.upper()}")
    raise ConversionError(f"--type {name} is not a GGUF type this converter writes; choose one "
                          f"of {', '.join(TYPES)}")


def architecture_of(model_type: str) -> str:
    if model_type not in ARCHITECTURES:
        raise ConversionError(f"model_type {model_type!r} has no llama.cpp architecture here; "
                              f"GGUF export maps {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[model_type]


def tensor_type(gguf_name: str, hf_shape: tuple[int, ...], type_name: str):
    """The ggml type of one tensor under the policy of the module docstring."""
    import gguf
    Q = gguf.GGMLQuantizationType
    if len(hf_shape) == 1:
        return Q.F32
    wanted = Q[TYPES[type_name][0]]
    if type_name in BELOW_Q8_0 and gguf_name in ("token_embd.weight", "output.weight"):
        wanted = Q.Q8_0
    block, _ = gguf.GGML_QUANT_SIZES[wanted]
    return wanted if hf_shape[-1] % block == 0 else Q.F16


def interleave_heads(w: np.ndarray, n_heads: int) -> np.ndarray:
    """q/k rows from Hugging Face's half-split RoPE layout to llama.cpp's `llama` layout, which
    pairs dimension i with i + head_dim/2 as neighbours (Meta's original order)."""
    rows = w.shape[0]
    return (w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).swapaxes(1, 2)
            .reshape(w.shape))


def split_heads(w: np.ndarray, n_heads: int) -> np.ndarray:
    """The inverse of `interleave_heads`."""
    rows = w.shape[0]
    return (w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2)
            .reshape(w.shape))


def rope_permuted_heads(cfg, arch: str, gguf_name: str) -> int | None:
    """The head count whose rows `interleave_heads` reorders for this tensor, or None: only
    `llama` files store q/k in llama.cpp's RoPE order."""
    if arch != "llama" or not gguf_name.endswith(("attn_q.weight", "attn_k.weight")):
        return None
    return cfg.n_heads if "attn_q" in gguf_name else cfg.n_kv_heads


@dataclasses.dataclass(frozen=True)
class GgufTensor:
    entry: Entry | None       # None for tensors computed from the config (rope_freqs)
    name: str
    shape: tuple[int, ...]    # numpy (HF) order
    qtype: object             # gguf.GGMLQuantizationType


def gguf_tensors(cfg, arch: str, type_name: str, type_like: dict | None = None
                 ) -> list[GgufTensor]:
    """Every tensor of the file, named as llama.cpp names them, with its type."""
    import gguf
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], cfg.n_layers)
    out = []
    for e in param_map(cfg):
        name = names.get_name(e.hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ConversionError(f"{e.hf_name} has no llama.cpp name in architecture {arch}")
        out.append(GgufTensor(e, name, e.hf_shape, _type_of(name, e.hf_shape, type_name,
                                                             type_like)))
    if cfg.rope_type == "llama3":
        shape = (cfg.resolved_head_dim // 2,)
        out.append(GgufTensor(None, "rope_freqs.weight", shape,
                              gguf.GGMLQuantizationType.F32))
    return out


def tensor_bytes(shape: tuple[int, ...], qtype) -> int:
    import gguf
    block, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape)) // block * block_bytes


def gguf_bytes(cfg, type_name: str, model_type: str | None = None) -> int:
    """Bytes of tensor data a file of `cfg` at `type_name` holds (the file adds its metadata,
    chiefly the tokenizer: ~1-5 MB): the size column of docs/convert.md for any model."""
    arch = architecture_of(model_type or model_type_of(cfg))
    return sum(tensor_bytes(t.shape, t.qtype)
               for t in gguf_tensors(cfg, arch, check_type(type_name)))


def _type_of(name, shape, type_name, type_like):
    if type_like is None:
        return tensor_type(name, shape, type_name)
    if name not in type_like:
        raise ConversionError(f"--type_like file has no tensor {name}; it is not a file of "
                              "this model")
    return type_like[name]


def rope_freq_factors(cfg) -> np.ndarray:
    """llama.cpp's `rope_freqs` for Llama-3 scaling: each frequency's divisor."""
    from slm_jax.model.decoder import rope_inv_freq
    plain = dataclasses.replace(cfg, rope_type="default")
    return (np.asarray(rope_inv_freq(plain), np.float64)
            / np.asarray(rope_inv_freq(cfg), np.float64)).astype(np.float32)


def _hf_tensor(params, cfg, arch: str, t: GgufTensor) -> np.ndarray:
    if t.entry is None:
        return rope_freq_factors(cfg)
    w = hf_tensor(params, t.entry, np.float32)
    heads = rope_permuted_heads(cfg, arch, t.name)
    return np.ascontiguousarray(w if heads is None else interleave_heads(w, heads))


def encode(w: np.ndarray, qtype) -> np.ndarray:
    """The bytes (or float array) the file stores for `w` at `qtype`."""
    import gguf
    Q = gguf.GGMLQuantizationType
    if qtype == Q.F32:
        return w.astype(np.float32)
    if qtype == Q.F16:
        return w.astype(np.float16)
    return gguf.quants.quantize(w.astype(np.float32), qtype)


def _add_architecture(writer, cfg, context_length: int):
    writer.add_context_length(context_length)
    writer.add_embedding_length(cfg.d_model)
    writer.add_block_count(cfg.n_layers)
    writer.add_feed_forward_length(cfg.mlp_dim)
    writer.add_head_count(cfg.n_heads)
    writer.add_head_count_kv(cfg.n_kv_heads)
    writer.add_key_length(cfg.resolved_head_dim)
    writer.add_value_length(cfg.resolved_head_dim)
    writer.add_rope_dimension_count(cfg.resolved_head_dim)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_vocab_size(cfg.vocab_size)


def write_gguf(params, cfg, out: str, *, type_name: str = "q8_0", tokenizer_dir: str,
               model_type: str | None = None, context_length: int | None = None,
               name: str | None = None, type_like: str | None = None,
               tokenizer_pre: str | None = None, chat_template: str | None = None) -> dict:
    """Writes `out`; returns {tensor name: ggml type name}."""
    import gguf
    type_name = check_type(type_name)
    arch = architecture_of(model_type or model_type_of(cfg))
    like = read_types(type_like) if type_like else None
    tensors = gguf_tensors(cfg, arch, type_name, like)
    partial = out + ".partial"
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    writer = gguf.GGUFWriter(partial, arch)
    try:
        writer.add_name(name or os.path.splitext(os.path.basename(out))[0])
        writer.add_file_type(gguf.LlamaFileType[TYPES[type_name][1]])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_architecture(writer, cfg, context_length or cfg.max_seq_len)
        add_tokenizer(writer, tokenizer_dir, cfg.vocab_size, pre=tokenizer_pre,
                      chat_template=chat_template)
        for t in tensors:
            byte_shape = gguf.quant_shape_to_byte_shape(t.shape, t.qtype)
            if t.qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
                dtype = np.float32 if t.qtype == gguf.GGMLQuantizationType.F32 else np.float16
                writer.add_tensor_info(t.name, t.shape, np.dtype(dtype),
                                       int(np.prod(t.shape)) * np.dtype(dtype).itemsize)
            else:
                writer.add_tensor_info(t.name, byte_shape, np.dtype(np.uint8),
                                       int(np.prod(byte_shape)), raw_dtype=t.qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in tensors:
            writer.write_tensor_data(encode(_hf_tensor(params, cfg, arch, t), t.qtype))
        writer.close()
        os.replace(partial, out)
    except BaseException:
        writer.close()
        if os.path.exists(partial):
            os.remove(partial)
        raise
    return {t.name: t.qtype.name for t in tensors}


def read_types(path: str) -> dict:
    """{tensor name: ggml type} of a GGUF file."""
    import gguf
    from slm_jax.hf.gguf import check_gguf
    check_gguf(path)
    return {t.name: gguf.GGMLQuantizationType(t.tensor_type)
            for t in gguf.GGUFReader(path).tensors}


def _source_config(source_dir: str | None) -> dict:
    """The model's original config.json ({} when none is known)."""
    return hub_files.read_json(os.path.join(source_dir, "config.json")) if source_dir else {}


def _staged_tokenizer(tokenizer: str | None, source_dir: str | None, scratch: str) -> str:
    """A directory of HF tokenizer files: --tokenizer copied as `orbax_to_hf` copies it, or
    the model's source directory."""
    if tokenizer and not os.path.isdir(tokenizer):
        hub_files.copy_tokenizer(tokenizer, scratch)
        return scratch
    return tokenizer_directory(tokenizer, source_dir)


def orbax_to_gguf(ckpt_dir: str, out: str, cfg=None, *, gin_files: list[str] | None = None,
                  type_name: str = "q8_0", tokenizer: str | None = None, **options) -> dict:
    """The latest checkpoint in `ckpt_dir` (the forms `orbax_to_hf` takes) as a GGUF file."""
    import tempfile

    from slm_jax.hf.conversion import find_model_gin, restore_cpu_params
    from slm_jax.hf.mapping import model_config_from_gin

    check_type(type_name)   # refusals before any restore
    if os.path.exists(out):
        raise ConversionError(f"{out} exists; choose a new --out (nothing is overwritten)")
    if cfg is None:
        cfg = model_config_from_gin(gin_files or find_model_gin(ckpt_dir))
    source_dir = hub_files.find_source_dir(ckpt_dir)
    source = _source_config(source_dir)
    model_type = source.get("model_type") or model_type_of(cfg)
    architecture_of(model_type)
    # the context the model was made for, when larger than the one it was converted at
    context = max(cfg.max_seq_len, int(source.get("max_position_embeddings", 0)))
    with tempfile.TemporaryDirectory(prefix="slm_gguf_tok_") as scratch:
        tok_dir = _staged_tokenizer(tokenizer or hub_files.run_tokenizer(ckpt_dir), source_dir,
                                    scratch)
        return write_gguf(restore_cpu_params(ckpt_dir, cfg), cfg, out, type_name=type_name,
                          tokenizer_dir=tok_dir, model_type=model_type, context_length=context,
                          **options)


def hf_to_gguf(hf_dir: str, out: str, *, type_name: str = "q8_0", tokenizer: str | None = None,
               **options) -> dict:
    """A Hugging Face directory of a mapped family (e.g. `orbax_to_hf`'s export) as GGUF."""
    import tempfile

    from slm_jax.hf.conversion import read_hf_config, read_hf_params
    from slm_jax.hf.mapping import model_config_from_hf

    check_type(type_name)
    if os.path.exists(out):
        raise ConversionError(f"{out} exists; choose a new --out (nothing is overwritten)")
    hf, config_path = read_hf_config(hf_dir)
    cfg = model_config_from_hf(hf, scan_layers=False, source=config_path)
    architecture_of(hf.get("model_type", "llama"))
    with tempfile.TemporaryDirectory(prefix="slm_gguf_tok_") as scratch:
        tok_dir = _staged_tokenizer(tokenizer, hf_dir, scratch)
        params = read_hf_params(hf_dir, cfg)
        return write_gguf(params, cfg, out, type_name=type_name, tokenizer_dir=tok_dir,
                          model_type=hf.get("model_type", "llama"), **options)
