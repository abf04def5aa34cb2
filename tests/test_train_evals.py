"""The in-training eval hooks (slm_jax/evals/train_evals.py) on a tiny random model sharded
over 8 CPU devices, built from a stand-in for the trainer's EvalContext and called inside
the runtime's context, as the trainer calls them. (A real training run with both hooks is
tests/test_evaluation.py.)"""

import json
import types

import jax
import pytest

from slm_jax import model as model_lib
from slm_jax.evals import train_evals
from slm_jax.evals.train_evals import FewShotEvalConfig, HarnessEval
from slm_jax.math_eval import problems as data_lib
from slm_jax.math_eval import runner
from slm_jax.model.generate import Generator
from slm_jax.parallel.runtime import Runtime
from tests import lm_eval_tasks
from tests.test_lm_eval_backend import TINY, tiny_vocab

PROBLEMS = [{"question": f"What is {a} plus {b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"}
            for a, b in [(1, 2), (3, 4), (2, 2), (5, 1), (0, 3)]]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_evals")
    tiny_vocab(root)  # writes root/spm.model
    vocab_path = str(root / "spm.model")
    runtime = Runtime.from_config()
    params = model_lib.init_params(TINY, jax.random.key(0))
    sharded = jax.device_put(params, runtime.param_shardings(TINY))
    context = types.SimpleNamespace(model=TINY, runtime=runtime,
                                    data=types.SimpleNamespace(vocab_path=vocab_path))
    dataset = root / "problems.jsonl"
    dataset.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    return context, params, sharded, str(dataset)


def test_few_shot_hook_equals_unsharded_generation(setup, monkeypatch):
    context, params, sharded, dataset = setup
    config = FewShotEvalConfig(dataset=dataset, name="adds", num_problems=4, n_shot=1,
                               max_new_tokens=12, batch_size=3)
    solved = []
    solve = runner.solve
    monkeypatch.setattr(runner, "solve",
                        lambda *a, **k: solved.append(solve(*a, **k)) or solved[-1])
    hook = config.make_hook(context)
    with context.runtime.activate():
        metrics = hook(sharded)
    rows, = solved
    assert metrics == {"adds_accuracy": runner.accuracy(rows)} and len(rows) == 4
    sp = train_evals.load_tokenizer(context.data.vocab_path, TINY, "DataConfig.vocab_path")
    expected = solve(Generator(TINY, batch_size=4), params, sp,
                     data_lib.load_problems(dataset, 4), n_shot=1, max_new_tokens=12)
    assert [r["generation"] for r in rows] == [r["generation"] for r in expected]
    assert [r["correct"] for r in rows] == [r["correct"] for r in expected]


def test_few_shot_hook_refuses_a_missing_dataset_and_a_too_large_tokenizer(setup, tmp_path):
    context, *_ = setup
    with pytest.raises(ValueError, match="FewShotEvalConfig.dataset"):
        FewShotEvalConfig(dataset=str(tmp_path / "missing.jsonl")).make_hook(context)
    with pytest.raises(ValueError, match="FewShotEvalConfig.dataset"):
        FewShotEvalConfig().make_hook(context)
    small = model_lib.ModelConfig(vocab_size=64, d_model=16, n_layers=1, n_heads=2,
                                  n_kv_heads=1, mlp_dim=32, max_seq_len=32, dtype="float32")
    with pytest.raises(ValueError, match=r"DataConfig.vocab_path=.* has 384 pieces, more than "
                                         r"ModelConfig.vocab_size=64"):
        train_evals.load_tokenizer(context.data.vocab_path, small, "DataConfig.vocab_path")
    with pytest.raises(ValueError, match="eval.vocab_path is not set"):
        train_evals.load_tokenizer("", TINY, "eval.vocab_path")


def test_harness_hook_logs_lm_eval_metrics_of_the_live_params(setup, tmp_path):
    context, _, sharded, _ = setup
    include = lm_eval_tasks.write_tasks(tmp_path)
    hook = HarnessEval(tasks="tiny_mc,tiny_gen", limit=2, include_path=include,
                       include_defaults=False, max_gen_toks=8, batch_size=4).make_hook(context)
    with context.runtime.activate():
        metrics = hook(sharded)
    assert 0.0 <= metrics["tiny_mc_acc"] <= 1.0 and "tiny_gen_exact_match" in metrics
    with pytest.raises(ValueError, match="no task .*nope"):
        HarnessEval(tasks="tiny_mc,nope", include_path=include,
                    include_defaults=False).make_hook(context)


def test_tora_hook_runs_the_round_loop_on_the_live_params(setup):
    from slm_jax.evals.train_evals import ToraEval
    from slm_jax.math_eval import tora
    context, params, sharded, dataset = setup
    hook = ToraEval(dataset=dataset, num_problems=3, max_new_tokens=8, max_rounds=1,
                    batch_size=3).make_hook(context)
    with context.runtime.activate():
        metrics = hook(sharded)
    assert set(metrics) == {"heldout_tora_acc", "heldout_tora_program_ran_share"}
    assert 0 <= metrics["heldout_tora_acc"] <= 1
    with pytest.raises(ValueError, match="ToraEval.dataset"):
        ToraEval().make_hook(context)
    assert tora.MAX_ROUNDS == ToraEval().max_rounds == 4
