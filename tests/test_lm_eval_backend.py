"""The lm-eval backend (slm_jax/evals/lm_eval_backend.py) on a tiny random model sharded
over 8 CPU devices, checked against direct forwards of the unsharded model."""

import jax
import numpy as np
import pytest
from lm_eval.api.instance import Instance
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from slm_jax import model as model_lib
from slm_jax.data import tokenizer
from slm_jax.evals.lm_eval_backend import SlmJaxLM, generation_settings
from slm_jax.model.generate import greedy_generate_uncached

TINY = model_lib.ModelConfig(vocab_size=384, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                             mlp_dim=64, max_seq_len=96, dtype="float32")
TEXT = "The cat sat on the mat. Two plus three is five. A dog ran to the park and back again."


def tiny_vocab(directory):
    """A 384-piece SentencePiece model (bos=1, eos=2) trained on a few generated lines."""
    lines = [f"Question: what is {a} plus {b}? Answer: {a + b}. The {w} sat on the mat."
             for a in range(12) for b in range(6) for w in ("cat", "dog", "bird")]
    path = directory / "text.txt"
    path.write_text("\n".join(lines) + "\n" + TEXT + "\n")
    return tokenizer.load_vocabulary(
        tokenizer.train_sentencepiece([str(path)], str(directory / "spm"), vocab_size=384))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    vocab = tiny_vocab(tmp_path_factory.mktemp("vocab"))
    params = model_lib.init_params(TINY, jax.random.key(0))
    return vocab, params


def request(kind, *args):
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


@jax.jit
def _log_softmax(params, tokens_BT):
    return jax.nn.log_softmax(model_lib.logits(params, TINY, tokens_BT), axis=-1)


def direct_loglikelihood(params, context_ids, continuation_ids):
    """Sum of log p(continuation) and greedy match, from one unsharded forward."""
    tokens = list(context_ids) + list(continuation_ids)
    # One width for every call (one compilation); causal, so the padding changes nothing.
    padded = np.zeros((1, TINY.max_seq_len), np.int32)
    padded[0, :len(tokens) - 1] = tokens[:-1]
    logprobs = np.asarray(_log_softmax(params, padded))[0]
    positions = range(len(context_ids) - 1, len(tokens) - 1)
    total = sum(float(logprobs[p, tokens[p + 1]]) for p in positions)
    greedy = all(int(np.argmax(logprobs[p])) == tokens[p + 1] for p in positions)
    return total, greedy


def test_loglikelihood_matches_direct_forward(setup):
    vocab, params = setup
    lm = SlmJaxLM(params, TINY, vocab, batch_size=4)
    pairs = [("The cat sat on", " the mat."), ("Question: what is 2 plus 3? Answer: ", "5."),
             ("", "Two plus three is five."), ("A dog", " ran to the park")]
    answers = lm.loglikelihood([request("loglikelihood", *p) for p in pairs])
    for (context, continuation), (logprob, greedy) in zip(pairs, answers):
        bos = [vocab.bos_id]
        if context:
            # lm-eval's split: a trailing context space belongs to the continuation.
            stripped = context.rstrip()
            whole = bos + vocab.encode(stripped + context[len(stripped):] + continuation)
            context_ids = bos + vocab.encode(stripped)
        else:
            whole = bos + vocab.encode(continuation)
            context_ids = bos
        expected = direct_loglikelihood(params, context_ids, whole[len(context_ids):])
        assert abs(logprob - expected[0]) < 1e-4 and greedy == expected[1]


def test_is_greedy_and_left_truncation(setup):
    vocab, params = setup
    lm = SlmJaxLM(params, TINY, vocab, max_length=16)
    context = vocab.encode(TEXT)[:10]
    greedy = greedy_generate_uncached(params, TINY, [context], max_new_tokens=3, eos_id=None)[0]
    other = [(greedy[0] + 1) % TINY.vocab_size] + greedy[1:]
    long_context = vocab.encode(TEXT)
    answers = lm._loglikelihood_tokens([(None, context, greedy), (None, context, other),
                                        (None, long_context, [5, 6])])
    assert answers[0][1] and not answers[1][1]
    assert abs(answers[0][0] - direct_loglikelihood(params, context, greedy)[0]) < 1e-4
    # Too long for max_length=16: the model reads the last 16 tokens, as lm-eval's hf does.
    kept = (long_context + [5, 6])[-17:]
    assert abs(answers[2][0] - direct_loglikelihood(params, kept[:-2], kept[-2:])[0]) < 1e-4


def test_loglikelihood_rolling_windows(setup):
    vocab, params = setup
    tokens = vocab.encode(TEXT)
    assert len(tokens) > 20
    short = SlmJaxLM(params, TINY, vocab, max_length=8)
    rolled, empty = short.loglikelihood_rolling([request("loglikelihood_rolling", TEXT),
                                                 request("loglikelihood_rolling", "")])
    windows = map(make_disjoint_window, get_rolling_token_windows(tokens, vocab.bos_id, 8, 1))
    expected = sum(direct_loglikelihood(params, c, p)[0] for c, p in windows)
    assert abs(rolled - expected) < 1e-3 and empty == 0.0
    # One window holds it all: the same as the loglikelihood of the text after the prefix.
    whole = SlmJaxLM(params, TINY, vocab).loglikelihood_rolling(
        [request("loglikelihood_rolling", TEXT)])[0]
    assert abs(whole - direct_loglikelihood(params, [vocab.bos_id], tokens)[0]) < 1e-3


def test_generate_until_greedy_stops_and_samples(setup):
    vocab, params = setup
    lm = SlmJaxLM(params, TINY, vocab, batch_size=4)
    contexts = ["The cat", "Question: what is 4 plus 1? Answer:", "A dog ran"]
    prompts = [[vocab.bos_id] + vocab.encode(c) for c in contexts]
    oracle = [vocab.decode(t) for t in greedy_generate_uncached(
        params, TINY, prompts, max_new_tokens=12, eos_id=vocab.eos_id)]
    stop = oracle[0][3:5]  # a stop string the first row meets in its own continuation
    greedy = {"until": [stop], "max_gen_toks": 12, "do_sample": False}
    texts = lm.generate_until([request("generate_until", c, greedy) for c in contexts])
    assert texts == [o[:o.index(stop)] if stop in o else o for o in oracle]
    assert len(texts[0]) < len(oracle[0])

    sampled = {"until": [], "max_gen_toks": 12, "do_sample": True, "temperature": 1.0}
    nucleus = {**sampled, "top_p": 1e-6}  # only the top token: greedy again
    requests = [request("generate_until", c, kw) for kw in (sampled, nucleus) for c in contexts]
    out, again = (SlmJaxLM(params, TINY, vocab, batch_size=4).generate_until(requests)
                  for _ in range(2))
    assert out == again  # the seed makes sampling repeatable
    assert out[:3] != oracle and out[3:] == oracle


def test_generation_settings_follow_lm_eval():
    s = generation_settings({"until": "Q:", "max_new_tokens": 7}, 256)
    assert (s.until, s.max_gen_toks, s.temperature, s.top_p) == (("Q:",), 7, 0.0, 1.0)
    s = generation_settings({"do_sample": True, "top_p": 0.9, "num_beams": 1}, 256)
    assert (s.max_gen_toks, s.temperature, s.top_p) == (256, 1.0, 0.9)
    assert generation_settings({"temperature": 0.5}, 8).temperature == 0.5  # implies sampling
    with pytest.raises(ValueError, match="num_beams"):
        generation_settings({"num_beams": 4}, 8)


def test_by_name_from_a_checkpoint(setup, tmp_path):
    """model="slm_jax", model_args="checkpoint=...,tokenizer=...": the ModelConfig from the
    model.gin beside the checkpoints, as hf_to_orbax writes it."""
    from lm_eval.api.registry import get_model
    from slm_jax.hf.conversion import save_params
    from slm_jax.hf.mapping import model_gin
    vocab, params = setup
    save_params(jax.device_get(params), str(tmp_path / "checkpoints"), {})
    (tmp_path / "model.gin").write_text(model_gin(TINY, "tiny") + "ModelConfig.dtype = 'float32'\n")
    args = f"checkpoint={tmp_path / 'checkpoints'},tokenizer={vocab.sentencepiece_model_file}"
    lm = get_model("slm_jax").create_from_arg_string(args, {"batch_size": 4})
    pair = request("loglikelihood", "The cat sat on", " the mat.")
    assert lm.batch_size == 4 and lm.config == TINY
    assert abs(lm.loglikelihood([pair])[0][0] -
               SlmJaxLM(params, TINY, vocab).loglikelihood([pair])[0][0]) < 1e-5


def test_answers_match_lm_evals_hf_backend_on_smollm2(smollm2_hf_dir, smollm2_orbax_dir):
    """The real SmolLM2-135M: our orbax conversion through this backend against lm-eval's
    transformers backend on the Hugging Face weights. HF's log-softmax runs in float64:
    torch's float32 log_softmax on CPU drifts ~1.6e-5 nats per token from the exact value
    (1e-3 over 63 tokens of this model; XLA's: 3e-6), which would swamp the comparison."""
    import os
    from lm_eval.models.huggingface import HFLM
    from slm_jax.hf.mapping import model_config_from_gin
    from slm_jax.parallel.runtime import Runtime
    hf = HFLM(pretrained=smollm2_hf_dir, device="cpu", batch_size=8, max_length=32,
              dtype="float32", softmax_dtype="float64")
    config = model_config_from_gin([os.path.join(smollm2_orbax_dir, "model.gin")])
    # One device: the sharded paths are the tiny model's tests; 8 fake CPU devices on
    # a 2-core machine would only make decoding slow.
    ours = SlmJaxLM.from_checkpoint(
        os.path.join(smollm2_orbax_dir, "checkpoints"), smollm2_hf_dir, config,
        runtime=Runtime.from_config(devices=jax.devices()[:1]), dtype="float32", batch_size=8,
        max_length=32, prefix_token_id=hf.prefix_token_id)
    pairs = [("The capital of France is", " Paris"),
             ("Question: What is 3 times 4?\nAnswer: ", "12"),
             ("", "Hello world, how are you?"), ("Once upon a time", " there was a little girl.")]
    rolling = ["The quick brown fox jumps over the lazy dog. " * 4]  # two windows of 32
    generate = [("Question: What is 2 + 3?\nAnswer:",
                 {"until": ["\n\n", "Question:"], "max_gen_toks": 10, "do_sample": False}),
                ("List three colors:", {"until": ["."], "max_gen_toks": 10, "do_sample": False})]
    ll = [request("loglikelihood", *p) for p in pairs]
    rl = [request("loglikelihood_rolling", t) for t in rolling]
    gen = [request("generate_until", *g) for g in generate]
    answers, hf_answers = ours.loglikelihood(ll), hf.loglikelihood(ll)
    diffs = [abs(a[0] - b[0]) for a, b in zip(answers, hf_answers)]
    diffs += [abs(a - b) for a, b in zip(ours.loglikelihood_rolling(rl),
                                         hf.loglikelihood_rolling(rl))]
    assert [g for _, g in answers] == [g for _, g in hf_answers]
    texts, hf_texts = ours.generate_until(gen), hf.generate_until(gen)
    print(f"max |loglikelihood diff| vs hf: {max(diffs):.2e}; generate_until identical: "
          f"{sum(a == b for a, b in zip(texts, hf_texts))}/{len(texts)} {texts}")
    assert max(diffs) < 1e-3
    assert texts == hf_texts and all(texts)
