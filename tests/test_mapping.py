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
    assert sorted(os.listdir(out)) == ["checkpoints", "config.json", "generation_config.json",
                                       "model.gin"]
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
                                               "rope_theta": 5e5}),
     "rope_type 'llama3' lacks low_freq_factor"),
    (None, lambda c: c.update(rope_parameters={"rope_type": "yarn", "factor": 4.0}),
     "rope_parameters"),
    (None, lambda c: c.update(model_type="gpt_neox"), "model_type='gpt_neox' is not supported"),
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


@pytest.mark.parametrize("name", ["smollm2_135m", "qwen2_5_1_5b", "llama3_2_1b", "qwen3_0_6b",
                                  "tinyllama_1b", "mistral_7b"])
def test_named_sizes_export_to_the_same_transformers_model(name):
    """The config.json a named size exports builds, in transformers, a model of the family
    with exactly our parameter count and tensor names (meta device: nothing allocated)."""
    from slm_jax import model as model_lib
    cfg = mapping.model_config_from_gin([f"gin/models/{name}.gin"])
    hf = mapping.hf_config_from_model(cfg, "float32")
    config = transformers.AutoConfig.for_model(**{k: v for k, v in hf.items()
                                                  if k not in ("architectures",)})
    with torch.device("meta"):
        hf_model = transformers.AutoModelForCausalLM.from_config(config)
    assert type(hf_model).__name__ == hf["architectures"][0]
    assert sum(p.numel() for p in hf_model.parameters()) == model_lib.count_params(cfg)
    names = {n for n in hf_model.state_dict() if not (cfg.tie_embeddings and n == "lm_head.weight")}
    assert names == {e.hf_name for e in mapping.param_map(cfg)}
