"""Pieces of the miniature experiment (slm_jax/jobs/experiment.py): grading, curve crossing,
greedy decoding, plot."""

import jax
import numpy as np

from slm_jax.jobs import experiment
from slm_jax.math_eval import grader
from slm_jax import model as model_lib
from slm_jax.model.generate import greedy_generate

TINY = model_lib.ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                             mlp_dim=64, max_seq_len=32, dtype="float32")


def test_answers_are_graded_by_the_eval_jobs_grader():
    # One grading path: the experiment's accuracy hook uses math_eval's grader.
    correct = lambda text, answer: grader.is_equiv(grader.extract_answer(text), answer)
    assert correct("a = 3\n#### 1,254\nQuestion:", "1254")
    assert correct("#### -7", "-7") and correct("#### 2.5", "2.5")
    assert not correct("#### 2.5", "25") and not correct("no answer line", "7")


def test_tokens_to_reach_interpolates():
    assert experiment.tokens_to_reach([10, 20, 30], [5.0, 3.0, 1.0], 2.0) == 25
    assert experiment.tokens_to_reach([10, 20], [1.0, 0.5], 2.0) == 10
    assert experiment.tokens_to_reach([10, 20], [5.0, 4.0], 2.0) is None


def test_greedy_generate_matches_stepwise_argmax():
    params = model_lib.init_params(TINY, jax.random.key(0))
    prompts = [[1, 5, 9], [1, 7]]
    outs = greedy_generate(params, TINY, prompts, max_new_tokens=5, eos_id=None)
    for prompt, out in zip(prompts, outs):
        seq = list(prompt)
        for _ in range(5):
            logits = model_lib.logits(params, TINY, np.array([seq], np.int32))
            seq.append(int(np.argmax(logits[0, -1])))
        assert out == seq[len(prompt):]


def test_greedy_generate_stops_at_eos():
    params = model_lib.init_params(TINY, jax.random.key(0))
    first = greedy_generate(params, TINY, [[1, 5]], max_new_tokens=1, eos_id=None)[0][0]
    assert greedy_generate(params, TINY, [[1, 5]], max_new_tokens=4, eos_id=first) == [[]]


def test_summary_and_plot(tmp_path):
    curves = {"clm": {"tokens": [100, 200], "loss": [3.0, 2.0], "accuracy": [0.0, 0.1]},
              "slm": {"tokens": [100, 200], "loss": [2.5, 1.5], "accuracy": [0.05, 0.2]},
              "reference_loss": 1.2}
    table, summary = experiment.summarize(curves, 0.6)
    assert "| 200 | 2.0000 | 1.5000 | 10.0% | 20.0% |" in table
    assert summary["tokens_to_reach_clm_final_loss"] == 150
    assert abs(summary["speedup"] - 200 / 150) < 1e-9
    experiment.plot_curves(curves, str(tmp_path / "c.png"), 0.6)
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
