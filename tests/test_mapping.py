"""The HF <-> slm-jax mapping (slm_jax/hf/mapping.py): param table layout and config errors naming the culprit."""
import os

import numpy as np
import pytest

from safetensors.numpy import load_file, save_file  # noqa: E402

from slm_jax import convert as convert_cli  # noqa: E402
from slm_jax.hf import conversion, mapping  # noqa: E402
from tests.test_conversion import BASE, CASES, _variant, converted, make_hf_model, small_hf, torch, transformers  # noqa: F401  (shared fixtures and helpers)

# name -> (HF config overrides, architecture, save_pretrained kwargs, scan_layers)


def test_layout(converted):
    name, _, cfg, out, _ = converted
    assert sorted(os.listdir(out)) == ["checkpoints", "model.gin", "tokenizer.model"]
    assert os.listdir(os.path.join(out, "checkpoints")) == ["0"]
    if CASES[name][2]:
        hf_dir = os.path.join(os.path.dirname(out), "hf")
        assert os.path.exists(os.path.join(hf_dir, "model.safetensors.index.json"))
        assert len([f for f in os.listdir(hf_dir) if f.endswith(".safetensors")]) > 1


# --- errors name the tensor or setting --------------------------------------------------


@pytest.mark.parametrize("edit_tensors,edit_config,message", [
    (lambda t: t.pop("model.layers.1.mlp.up_proj.weight"), None,
     "tensor model.layers.1.mlp.up_proj.weight is missing"),
    (lambda t: t.update({"model.layers.0.self_attn.k_proj.weight": np.zeros((8, 32), "f4")}),
     None, "tensor model.layers.0.self_attn.k_proj.weight in "),
    (lambda t: t.update({"model.layers.0.self_attn.q_proj.bias": np.zeros(32, "f4")}), None,
     "unexpected tensor model.layers.0.self_attn.q_proj.bias"),
    (None, lambda c: c.update(architectures=["GPT2LMHeadModel"]), "GPT2LMHeadModel"),
    (None, lambda c: c.update(rope_parameters={"rope_type": "llama3", "factor": 8.0,
                                               "rope_theta": 5e5}), "rope_parameters"),
    (None, lambda c: c.update(rope_scaling={"type": "linear", "factor": 2.0}), "rope_scaling"),
    (None, lambda c: c.update(attention_bias=True), "attention_bias"),
    (None, lambda c: c.update(architectures=["MistralForCausalLM"], model_type="mistral",
                              sliding_window=16), "sliding_window=16"),
])
def test_errors_name_the_culprit(small_hf, tmp_path, edit_tensors, edit_config, message):
    hf_dir = _variant(small_hf, tmp_path, edit_tensors, edit_config)
    with pytest.raises(mapping.ConversionError, match=message.replace(".", r"\.")
                       .replace("[", r"\[")):
        conversion.hf_to_orbax(hf_dir, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out" / "checkpoints")


def test_sliding_window_ok_when_context_fits(small_hf, tmp_path):
    hf_dir = _variant(small_hf, tmp_path, edit_config=lambda c: c.update(
        architectures=["MistralForCausalLM"], model_type="mistral", sliding_window=32))
    cfg = conversion.hf_to_orbax(hf_dir, str(tmp_path / "out"), max_seq_len=32)
    assert cfg.max_seq_len == 32
