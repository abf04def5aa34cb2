"""GGUF export (slm_jax/hf/gguf_export.py), checked by independent readers: the demo-sized model
in all eight types read back by transformers' GGUF loader and by gguf.GGUFReader; every mapped
family's F32 file giving transformers the source model's logits; refusals that write nothing.
(Real SmolLM2 weights: tests/e2e/test_smollm2_gguf.py.)"""
import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

from slm_jax import convert as convert_cli  # noqa: E402
from slm_jax import model as model_lib  # noqa: E402
from slm_jax.corpora import embedded  # noqa: E402
from slm_jax.data import tokenizer  # noqa: E402
from slm_jax.data.chat import ChatTemplate  # noqa: E402
from slm_jax.hf import gguf_export, mapping  # noqa: E402
from slm_jax.hf.conversion import save_params  # noqa: E402
from slm_jax.hf.gguf import read_gguf_params  # noqa: E402
from slm_jax.hf.mapping import ConversionError  # noqa: E402
from slm_jax.model import generate as generate_lib  # noqa: E402

Q = gguf.GGMLQuantizationType
TEXT = "Solve 3x + 5 = 20, so x = 5. The sum of 12345 and 678 is 13023.\n  Indented  text"


def quant_step(original: np.ndarray, qtype) -> np.ndarray:
    """Per element, one quantization step of its block (what a round trip may move it by)."""
    if qtype == Q.F32:
        return np.zeros_like(original)
    if qtype in (Q.F16, Q.BF16):
        mantissa = 10 if qtype == Q.F16 else 7
        return np.abs(original) * 2.0 ** -mantissa + 1e-7
    block = original.reshape(*original.shape[:-1], -1, 32)
    if qtype in (Q.Q4_1, Q.Q5_1):
        levels = 15 if qtype == Q.Q4_1 else 31
        step = (block.max(-1, keepdims=True) - block.min(-1, keepdims=True)) / levels
    else:
        levels = {Q.Q8_0: 127, Q.Q5_0: 16, Q.Q4_0: 8}[qtype]
        step = np.abs(block).max(-1, keepdims=True) / levels
    return np.broadcast_to(step * 1.01 + 1e-6, block.shape).reshape(original.shape)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo's model shape (gin/models/small.gin), random weights with non-trivial norms,
    as an orbax checkpoint, and a SentencePiece model trained on the embedded corpus."""
    root = tmp_path_factory.mktemp("gguf_demo")
    paths = embedded.generate_corpus(str(root), seed=0, n_web_docs=150, n_clean_docs=10,
                                     n_eval_docs=10)
    spm_path = tokenizer.train_sentencepiece([paths.web_jsonl], str(root / "spm"),
                                             vocab_size=2048)
    cfg = mapping.model_config_from_gin(["gin/models/small.gin"])
    rng = np.random.default_rng(1)
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: (1 + 0.2 * rng.standard_normal(x.shape)).astype(np.float32)
        if path[-1].key == "scale" else np.asarray(x),
        model_lib.init_params(cfg, jax.random.PRNGKey(0)))
    save_params(params, str(root / "model" / "checkpoints"), {"source": "test"})
    (root / "model" / "model.gin").write_text(mapping.model_gin(cfg, "the demo's shape"))
    files = {}
    for type_name in gguf_export.TYPES:
        files[type_name] = str(root / f"demo-{type_name}.gguf")
        assert convert_cli.main(["orbax_to_gguf", "--ckpt_dir", str(root / "model"), "--out",
                                 files[type_name], "--type", type_name, "--tokenizer",
                                 spm_path]) == 0
    return cfg, params, spm_path, files


@pytest.mark.parametrize("type_name", list(gguf_export.TYPES))
def test_every_type_follows_the_policy_and_reads_back_within_a_step(demo, type_name):
    cfg, params, _, files = demo
    reader = gguf.GGUFReader(files[type_name])
    fields = {k: f.contents() for k, f in reader.fields.items()
              if not k.startswith("tokenizer.ggml.")}
    assert fields["general.architecture"] == "llama"
    assert fields["llama.block_count"] == cfg.n_layers
    assert fields["llama.attention.head_count_kv"] == cfg.n_kv_heads
    assert fields["llama.context_length"] == cfg.max_seq_len
    assert fields["llama.rope.dimension_count"] == cfg.resolved_head_dim
    assert fields["general.file_type"] == gguf.LlamaFileType[gguf_export.TYPES[type_name][1]]
    named = Q[gguf_export.TYPES[type_name][0]]
    for t in reader.tensors:
        want = (Q.F32 if len(t.shape) == 1 else
                Q.Q8_0 if type_name in gguf_export.BELOW_Q8_0
                and t.name in ("token_embd.weight", "output.weight") else named)
        assert Q(t.tensor_type) == want, t.name
    # The project's own reader (dequantization by the gguf package, q/k back to HF's layout)
    # gives every weight within one quantization step of the original, in the rows the file
    # stores (HF layout, one tensor per layer).
    back = read_gguf_params(files[type_name], cfg)
    for t in gguf_export.gguf_tensors(cfg, "llama", "f32"):
        want, got = mapping.hf_tensor(params, t.entry), mapping.hf_tensor(back, t.entry)
        err = np.abs(got - want)
        stored = Q(next(r.tensor_type for r in reader.tensors if r.name == t.name))
        assert (err <= quant_step(want, stored)).all(), (t.name, err.max())


def test_the_size_formula_is_the_files_tensor_data(demo):
    cfg, _, _, files = demo
    for type_name, path in files.items():
        stored = sum(int(t.n_bytes) for t in gguf.GGUFReader(path).tensors)
        assert gguf_export.gguf_bytes(cfg, type_name) == stored, type_name
        assert 0 < os.path.getsize(path) - stored < 200_000   # header, tokenizer, alignment


@pytest.mark.parametrize("type_name", list(gguf_export.TYPES))
def test_transformers_loads_every_type_as_the_project_reads_it(demo, type_name):
    cfg, params, spm_path, files = demo
    directory, name = os.path.split(files[type_name])
    model = transformers.AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=name, dtype=torch.float32).eval()
    ids = list(tokenizer.load_vocabulary(spm_path).encode(TEXT))
    with torch.no_grad():
        theirs = model(torch.tensor([ids])).logits[0].numpy()
    ours_from_file = np.asarray(model_lib.logits(read_gguf_params(files[type_name], cfg), cfg,
                                                 np.asarray(ids)[None]))[0]
    np.testing.assert_allclose(theirs, ours_from_file, atol=1e-4)
    if type_name == "f32":
        ours = np.asarray(model_lib.logits(params, cfg, np.asarray(ids)[None]))[0]
        np.testing.assert_allclose(theirs, ours, atol=1e-4)


def test_f32_tokenizer_and_greedy_text_match_the_project(demo):
    cfg, params, spm_path, files = demo
    directory, name = os.path.split(files["f32"])
    vocabulary = tokenizer.load_vocabulary(spm_path)
    theirs = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=name)
    assert theirs.encode(TEXT, add_special_tokens=False) == list(vocabulary.encode(TEXT))
    assert (theirs.bos_token_id, theirs.eos_token_id) == (vocabulary.bos_id, vocabulary.eos_id)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=name, dtype=torch.float32).eval()
    prompts = [list(vocabulary.encode(t)) for t in ("The sum of 12 and", "Problem: find x")]
    ours = generate_lib.greedy_generate(params, cfg, prompts, max_new_tokens=16, eos_id=None)
    for prompt, got in zip(prompts, ours):
        with torch.no_grad():
            want = model.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False,
                                  eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
        assert got == want
        assert theirs.decode(got) == vocabulary.decode(got)


# name -> (HF config overrides, model_type): every family mapping.py maps, at F32.
FAMILIES = {
    "llama_gqa_untied": (dict(num_attention_heads=4, num_key_value_heads=2,
                              tie_word_embeddings=False), "llama"),
    "mistral": (dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                     sliding_window=None), "mistral"),
    "qwen2_qkv_bias": (dict(num_attention_heads=4, num_key_value_heads=2, rope_theta=1e6,
                            tie_word_embeddings=True, use_sliding_window=False), "qwen2"),
    "qwen3_qk_norm": (dict(num_attention_heads=4, num_key_value_heads=2, rope_theta=1e6,
                           tie_word_embeddings=False, use_sliding_window=False), "qwen3"),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_gives_transformers_the_source_models_logits(demo, family, tmp_path):
    from tests.test_conversion import HF_CLASSES
    overrides, model_type = FAMILIES[family]
    torch.manual_seed(0)
    config = getattr(transformers, f"{HF_CLASSES[model_type]}Config")(
        vocab_size=2048, hidden_size=64, num_hidden_layers=2, intermediate_size=128,
        max_position_embeddings=128, rms_norm_eps=1e-5, **overrides)
    source = getattr(transformers, f"{HF_CLASSES[model_type]}ForCausalLM")(config).eval()
    with torch.no_grad():
        for p in source.parameters():
            p.normal_(0.0, 0.15)
    source.save_pretrained(tmp_path / "hf")
    out = str(tmp_path / "model.gguf")
    assert convert_cli.main(["orbax_to_gguf", "--hf_dir", str(tmp_path / "hf"), "--out", out,
                             "--type", "f32", "--tokenizer", demo[2]]) == 0
    assert gguf.GGUFReader(out).fields["general.architecture"].contents() == \
        gguf_export.ARCHITECTURES[model_type]
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path), gguf_file="model.gguf", dtype=torch.float32).eval()
    ids = torch.tensor([list(range(5, 40))])
    with torch.no_grad():
        np.testing.assert_allclose(loaded(ids).logits.numpy(), source(ids).logits.numpy(),
                                   atol=1e-4)


def test_llama3_rope_scaling_is_written_as_llama_cpps_frequency_factors(demo, tmp_path):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    config = transformers.LlamaConfig(
        vocab_size=2048, hidden_size=64, num_hidden_layers=1, intermediate_size=128,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 16})
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "hf")
    out = str(tmp_path / "llama3.gguf")
    gguf_export.hf_to_gguf(str(tmp_path / "hf"), out, type_name="q8_0", tokenizer=demo[2])
    stored = {t.name: t for t in gguf.GGUFReader(out).tensors}
    factors = np.asarray(stored["rope_freqs.weight"].data)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    plain = 1.0 / (500000.0 ** (np.arange(0, 16, 2) / 16))
    np.testing.assert_allclose(factors, plain / scaled.numpy(), rtol=1e-5)
    assert (factors >= 1).all() and factors.max() == pytest.approx(8.0)   # low bands divided by 8


def test_an_sft_runs_chat_template_goes_into_the_file(demo, tmp_path):
    _, _, spm_path, files = demo
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.gin").write_text("run.job = 'sft'\n")
    from slm_jax.convert import _chat_template
    assert _chat_template("auto", str(run / "checkpoints")) == ChatTemplate().jinja()
    assert _chat_template("auto", os.path.dirname(files["f32"])) is None
    (run / "config.gin").write_text("run.job = 'sft'\nChatTemplate.name = 'model'\n")
    assert _chat_template("auto", str(run / "checkpoints")) is None   # the tokenizer's own
    out = str(tmp_path / "chat.gguf")
    gguf_export.orbax_to_gguf(os.path.join(os.path.dirname(files["f32"]), "model"), out, type_name="q8_0", tokenizer=spm_path,
                              chat_template=ChatTemplate().jinja())
    written = gguf.GGUFReader(out).fields["tokenizer.chat_template"].contents()
    assert written == ChatTemplate().jinja()


def test_what_it_cannot_write_is_refused_and_nothing_is_written(demo, tmp_path, capsys):
    _, _, spm_path, files = demo
    model_dir = os.path.join(os.path.dirname(files["f32"]), "model")
    out = tmp_path / "x.gguf"
    cases = [
        (["--type", "q4_k_m", "--tokenizer", spm_path], "K-quant.*llama-quantize in.gguf "
                                                        "out.gguf Q4_K_M"),
        (["--type", "q3_0", "--tokenizer", spm_path], "choose one of f32, f16, bf16"),
        (["--tokenizer", str(tmp_path)], "holds neither tokenizer.json nor tokenizer.model"),
        ([], "no tokenizer for the GGUF file: pass --tokenizer"),
    ]
    for extra, message in cases:
        assert convert_cli.main(["orbax_to_gguf", "--ckpt_dir", model_dir, "--out", str(out),
                                 *extra]) != 0
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and __import__("re").search(message, err), err
        assert not out.exists() and not os.path.exists(str(out) + ".partial")
    assert convert_cli.main(["orbax_to_gguf", "--ckpt_dir", model_dir, "--out", files["f32"],
                             "--tokenizer", spm_path]) != 0
    assert "exists; choose a new --out" in capsys.readouterr().err
    with pytest.raises(ConversionError, match="model_type 'gemma' has no llama.cpp architecture"):
        gguf_export.architecture_of("gemma")
