"""HF checkpoints in and out (slm_jax/hf/conversion.py): logits parity with transformers, export round trip, errors."""
import dataclasses
import json
import os
import shutil

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.numpy import load_file, save_file  # noqa: E402

from slm_jax.parallel import checkpoint as ckpt_lib  # noqa: E402
from slm_jax import convert as convert_cli  # noqa: E402
from slm_jax.hf import mapping  # noqa: E402
from slm_jax import model as model_lib  # noqa: E402

TOL = 1e-4
flax_logits = jax.jit(model_lib.logits, static_argnums=1)
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
    # Llama-3.x: with original context 16, the test positions reach all three frequency
    # bands (kept, interpolated, divided by the factor).
    "llama3_rope_scaling": (dict(num_attention_heads=4, num_key_value_heads=2,
                                 head_dim=8, tie_word_embeddings=True,
                                 rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0,
                                                  "factor": 8.0, "low_freq_factor": 1.0,
                                                  "high_freq_factor": 4.0,
                                                  "original_max_position_embeddings": 16}),
                            "llama", {}, True),
    "qwen2_qkv_bias": (dict(num_attention_heads=4, num_key_value_heads=2, rope_theta=1e6,
                            tie_word_embeddings=True, use_sliding_window=False),
                       "qwen2", {}, True),
    "qwen3_qk_norm_headdim": (dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                   rope_theta=1e6, tie_word_embeddings=False,
                                   use_sliding_window=False), "qwen3", {}, False),
}
HF_CLASSES = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}


@pytest.fixture(scope="module")
def parity_report():
    """Max |flax - torch| logits per config; printed at the end (pytest -s shows it)."""
    report = {}
    yield report
    print("\nlogits parity, max abs diff (unpacked, packed):")
    for name, (unpacked, packed) in report.items():
        print(f"  {name:32s} {unpacked:.3e} {packed:.3e}")


def make_hf_model(overrides, arch, seed=0):
    torch.manual_seed(seed)
    family = HF_CLASSES[arch]
    config = getattr(transformers, f"{family}Config")(**BASE, **overrides)
    model = getattr(transformers, f"{family}ForCausalLM")(config)
    model.config._attn_implementation = "eager"
    with torch.no_grad():   # larger than the 0.02 init, and non-trivial norms, so errors show
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.15)
    return model.eval()


def torch_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor(np.asarray(tokens), dtype=torch.long)).logits.numpy()


def restore(out, cfg):
    abstract = model_lib.abstract_params(cfg)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return ckpt_lib.restore_params(os.path.join(out, "checkpoints"), abstract,
                                   jax.tree.map(lambda _: device, abstract), binding="test")


@pytest.fixture(scope="module", params=list(CASES))
def converted(request, tmp_path_factory):
    name = request.param
    overrides, arch, save_kwargs, scan = CASES[name]
    root = tmp_path_factory.mktemp(name)
    model = make_hf_model(overrides, arch, seed=list(CASES).index(name))
    hf_dir, out = str(root / "hf"), str(root / "orbax")
    model.save_pretrained(hf_dir, **save_kwargs)
    flag = "--scan_layers" if scan else "--no-scan_layers"
    assert convert_cli.main(["hf_to_orbax", "--hf_dir", hf_dir, "--out", out, flag]) == 0
    # The gin file written beside the checkpoint is the config a run would use.
    cfg = mapping.model_config_from_gin([os.path.join(out, "model.gin")])
    assert cfg.scan_layers == scan
    return name, model, cfg, out, root


def test_logits_match_transformers(converted, parity_report):
    name, model, cfg, out, _ = converted
    cfg32 = dataclasses.replace(cfg, dtype="float32")
    params = restore(out, cfg)
    rng = np.random.RandomState(1)

    # Unpacked: a batch of independent rows, positions 0.., one segment.
    tokens = rng.randint(0, cfg.vocab_size, (2, 24))
    positions = np.broadcast_to(np.arange(24), (2, 24))
    flax_unpacked = np.asarray(flax_logits(params, cfg32, tokens, positions, np.ones((2, 24))))
    diff_unpacked = np.abs(flax_unpacked - torch_logits(model, tokens)).max()

    # Packed: two documents per row (segment ids, positions restarting at 0) vs torch on
    # each document alone.
    splits = (11, 16)
    docs = [(rng.randint(0, cfg.vocab_size, n), rng.randint(0, cfg.vocab_size, 24 - n))
            for n in splits]
    tokens = np.stack([np.concatenate(pair) for pair in docs])
    segments = np.stack([np.repeat([1, 2], [n, 24 - n]) for n in splits])
    positions = np.stack([np.concatenate([np.arange(n), np.arange(24 - n)]) for n in splits])
    packed = np.asarray(flax_logits(params, cfg32, tokens, positions, segments))
    diff_packed = max(
        np.abs(packed[row, start:start + len(doc)] - torch_logits(model, doc[None])[0]).max()
        for row, (n, pair) in enumerate(zip(splits, docs))
        for start, doc in zip((0, n), pair))
    parity_report[name] = (float(diff_unpacked), float(diff_packed))
    assert diff_unpacked < TOL and diff_packed < TOL, (diff_unpacked, diff_packed)


def test_export_roundtrip(converted):
    """orbax_to_hf on hf_to_orbax's OUT gives back the family, config and exact logits."""
    name, model, _, out, root = converted
    hf_out = str(root / "exported")
    argv = ["orbax_to_hf", "--ckpt_dir", out, "--out", hf_out, "--max_shard_size", "30KB"]
    assert convert_cli.main(argv) == 0   # finds OUT/model.gin and OUT/config.json by itself
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        hf_out, attn_implementation="eager").eval()
    assert type(reloaded) is type(model) and reloaded.dtype == torch.float32
    exported = json.loads((root / "exported" / "config.json").read_text())
    assert exported["transformers_version"] == transformers.__version__
    assert exported["torch_dtype"] == "float32"
    assert os.path.exists(os.path.join(hf_out, "generation_config.json"))
    tokens = np.random.RandomState(2).randint(0, model.config.vocab_size, (2, 20))
    np.testing.assert_array_equal(torch_logits(reloaded, tokens), torch_logits(model, tokens))


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


def test_shape_error_says_both_shapes(small_hf, tmp_path, capsys):
    hf_dir = _variant(small_hf, tmp_path, edit_tensors=lambda t: t.update(
        {"lm_head.weight": np.zeros((96, 16), "f4")}))
    assert convert_cli.main(["hf_to_orbax", "--hf_dir", hf_dir, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "tensor lm_head.weight" in err and "[96, 16], expected [96, 32]" in err


def test_restore_with_wrong_config_names_binding(converted, tmp_path):
    name, _, cfg, out, _ = converted
    wrong = dataclasses.replace(cfg, scan_layers=not cfg.scan_layers)
    with pytest.raises(ValueError, match="test="):
        restore(out, wrong)


def test_restores_sharded_over_a_mesh(converted):
    """The converted params load FSDP x tensor sharded over the 8 test devices, as in train."""
    from slm_jax.parallel import sharding
    name, _, cfg, out, _ = converted
    mesh = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=4, tensor=2))
    shardings = sharding.param_shardings(cfg, mesh)
    params = ckpt_lib.restore_params(os.path.join(out, "checkpoints"),
                                     model_lib.abstract_params(cfg), shardings, binding="test")
    expected = restore(out, cfg)
    for got, want, sh in zip(jax.tree.leaves(params), jax.tree.leaves(expected),
                             jax.tree.leaves(shardings)):
        assert got.sharding == sh
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
