"""The HF <-> slm-jax mapping (slm_jax/hf/mapping.py): param table layout and config errors naming the culprit."""
import json
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.numpy import load_file, save_file  # noqa: E402

from slm_jax import convert as convert_cli  # noqa: E402
from slm_jax.hf import conversion, mapping  # noqa: E402

BASE = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, intermediate_size=64,
            max_position_embeddings=64, rms_norm_eps=1e-5)
# name -> (HF config overrides, architecture, save_pretrained kwargs, scan_layers)
CASES = {
    "gqa_untied_theta1e4": (dict(num_attention_heads=4, num_key_value_heads=2,
                                 rope_theta=10000.0, tie_word_embeddings=False),
                            "llama", {}, True),
    "mha_tied_theta5e5_sharded": (dict(num_attention_heads=4, num_key_value_heads=4,
                                       rope_theta=500000.0, tie_word_embeddings=True),
                                  "llama", {"max_shard_size": "20KB"}, False),
    "gqa_tied_headdim16_theta5e5": (dict(num_attention_heads=4, num_key_value_heads=1,
                                         head_dim=16, rope_theta=500000.0,
                                         tie_word_embeddings=True), "llama", {}, True),
    "mistral_gqa_untied": (dict(num_attention_heads=4, num_key_value_heads=2,
                                rope_theta=10000.0, tie_word_embeddings=False,
                                sliding_window=None), "mistral", {}, False),
}


def make_hf_model(overrides, arch, seed=0):
    torch.manual_seed(seed)
    if arch == "mistral":
        config = transformers.MistralConfig(**BASE, **overrides)
        model = transformers.MistralForCausalLM(config)
    else:
        config = transformers.LlamaConfig(**BASE, **overrides)
        model = transformers.LlamaForCausalLM(config)
    model.config._attn_implementation = "eager"
    with torch.no_grad():   # larger than the 0.02 init, and non-trivial norms, so errors show
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.15)
    return model.eval()


@pytest.fixture(scope="module", params=list(CASES))
def converted(request, tmp_path_factory):
    name = request.param
    overrides, arch, save_kwargs, scan = CASES[name]
    root = tmp_path_factory.mktemp(name)
    model = make_hf_model(overrides, arch, seed=list(CASES).index(name))
    hf_dir, out = str(root / "hf"), str(root / "orbax")
    model.save_pretrained(hf_dir, **save_kwargs)
    (root / "hf" / "tokenizer.model").write_bytes(b"sp-model-bytes")
    flag = "--scan_layers" if scan else "--no-scan_layers"
    assert convert_cli.main(["hf_to_orbax", "--hf_dir", hf_dir, "--out", out, flag]) == 0
    # The gin file written beside the checkpoint is the config a run would use.
    cfg = mapping.model_config_from_gin([os.path.join(out, "model.gin")])
    assert cfg.scan_layers == scan
    return name, model, cfg, out, root


def test_layout(converted):
    name, _, cfg, out, _ = converted
    assert sorted(os.listdir(out)) == ["checkpoints", "model.gin", "tokenizer.model"]
    assert os.listdir(os.path.join(out, "checkpoints")) == ["0"]
    if CASES[name][2]:
        hf_dir = os.path.join(os.path.dirname(out), "hf")
        assert os.path.exists(os.path.join(hf_dir, "model.safetensors.index.json"))
        assert len([f for f in os.listdir(hf_dir) if f.endswith(".safetensors")]) > 1


# --- errors name the tensor or setting --------------------------------------------------

@pytest.fixture(scope="module")
def small_hf(tmp_path_factory):
    root = tmp_path_factory.mktemp("errors")
    make_hf_model(CASES["gqa_untied_theta1e4"][0], "llama").save_pretrained(str(root / "hf"))
    return root / "hf"


def _variant(small_hf, tmp_path, edit_tensors=None, edit_config=None):
    hf_dir = tmp_path / "hf"
    shutil.copytree(small_hf, hf_dir)
    if edit_tensors:
        tensors = load_file(str(hf_dir / "model.safetensors"))
        edit_tensors(tensors)
        save_file(tensors, str(hf_dir / "model.safetensors"), metadata={"format": "pt"})
    if edit_config:
        config = json.loads((hf_dir / "config.json").read_text())
        edit_config(config)
        (hf_dir / "config.json").write_text(json.dumps(config))
    return str(hf_dir)


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
