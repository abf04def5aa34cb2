"""Log-probabilities of continuations (slm_jax/evals/loglikelihood.py) on a tiny random model
sharded over 8 CPU devices, against log_softmax of one unsharded forward per request."""

import jax
import numpy as np
import pytest

from slm_jax import model as model_lib
from slm_jax.evals.loglikelihood import ContinuationScorer, model_window
from slm_jax.parallel import sharding
from slm_jax.parallel.runtime import Runtime

TINY = model_lib.ModelConfig(vocab_size=64, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1,
                             mlp_dim=32, max_seq_len=32, dtype="float32")
# (context, continuation): lengths vary so the rows sort, pad and split over batches.
REQUESTS = [([1, 5, 9, 3], [4, 5]), ([1], [7]), ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [11, 12, 13]),
            ([1, 60, 61], [62, 63, 8, 9, 10]), ([1, 33], [2])]


@pytest.fixture(scope="module")
def params():
    return model_lib.init_params(TINY, jax.random.key(0))


@jax.jit
def _log_softmax(params, tokens_BT):
    return jax.nn.log_softmax(model_lib.logits(params, TINY, tokens_BT), axis=-1)


def direct(params, context, continuation, max_length=TINY.max_seq_len):
    """(sum of log p(continuation), every token the argmax) from one unsharded forward of
    (context + continuation)[-(max_length + 1):]."""
    tokens = (list(context) + list(continuation))[-(max_length + 1):]
    padded = np.zeros((1, TINY.max_seq_len), np.int32)  # one width: one compilation
    padded[0, :len(tokens) - 1] = tokens[:-1]
    logprobs = np.asarray(_log_softmax(params, padded))[0]
    scored = range(len(tokens) - 1 - len(continuation), len(tokens) - 1)
    total = sum(float(logprobs[p, tokens[p + 1]]) for p in scored)
    greedy = all(int(np.argmax(logprobs[p])) == tokens[p + 1] for p in scored)
    return total, greedy


def test_scores_equal_log_softmax_of_the_model(params):
    runtime = Runtime.from_config(sharding.MeshConfig(data=4, fsdp=1, tensor=2))
    scorer = ContinuationScorer(TINY, runtime, batch_size=2, length_bucket=8, chunk_size=4)
    sharded = jax.device_put(params, runtime.param_shardings(TINY))
    got = scorer(sharded, REQUESTS)
    assert len(got) == len(REQUESTS)
    for (context, continuation), (logprob, greedy) in zip(REQUESTS, got):
        expected_logprob, expected_greedy = direct(params, context, continuation)
        assert logprob == pytest.approx(expected_logprob, abs=1e-5, rel=1e-5)
        assert greedy == expected_greedy


def test_greedy_continuation_is_flagged(params):
    """A continuation built from the model's own argmax tokens is greedy; changing its last
    token makes it not greedy and lowers its log-probability."""
    runtime = Runtime.from_config()
    scorer = ContinuationScorer(TINY, runtime, batch_size=4)
    context = [1, 5, 9]
    continuation = []
    for _ in range(3):
        tokens = np.zeros((1, TINY.max_seq_len), np.int32)
        window = context + continuation
        tokens[0, :len(window)] = window
        logprobs = np.asarray(_log_softmax(params, tokens))[0]
        continuation.append(int(np.argmax(logprobs[len(window) - 1])))
    wrong = continuation[:-1] + [(continuation[-1] + 1) % TINY.vocab_size]
    (best, best_greedy), (other, other_greedy) = scorer(params, [(context, continuation),
                                                                 (context, wrong)])
    assert best_greedy and not other_greedy and best > other
    assert best == pytest.approx(direct(params, context, continuation)[0], abs=1e-5, rel=1e-5)


def test_long_requests_are_cut_from_the_left(params):
    scorer = ContinuationScorer(TINY, Runtime.from_config(), batch_size=4, max_length=8)
    context, continuation = list(range(1, 20)), [20, 21, 22]
    [(logprob, greedy)] = scorer(params, [(context, continuation)])
    expected_logprob, expected_greedy = direct(params, context, continuation, max_length=8)
    assert logprob == pytest.approx(expected_logprob, abs=1e-5, rel=1e-5)
    assert greedy == expected_greedy
    assert model_window(context, continuation, 8) == (list(range(14, 22)), list(range(15, 23)))


def test_bad_requests():
    with pytest.raises(ValueError, match="context and continuation"):
        model_window([], [3], 8)
    with pytest.raises(ValueError, match="max_length=2"):
        model_window([1], [3, 4, 5], 2)
    with pytest.raises(ValueError, match="max_seq_len"):
        ContinuationScorer(TINY, Runtime.from_config(), max_length=TINY.max_seq_len + 1)
