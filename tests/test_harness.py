"""lm-eval task lists through the slm_jax backend (slm_jax/evals/harness.py): local task
YAMLs of every request type, lm-eval's own output files, flat metrics."""

import json
import os

import jax
import pytest

from slm_jax import model as model_lib
from slm_jax.evals import harness
from slm_jax.evals.lm_eval_backend import SlmJaxLM
from tests import lm_eval_tasks
from tests.test_lm_eval_backend import TINY, tiny_vocab


@pytest.fixture(scope="module")
def manager(tmp_path_factory):
    include = lm_eval_tasks.write_tasks(tmp_path_factory.mktemp("tasks"))
    return harness.task_manager(include, include_defaults=False)


def test_local_tasks_run_and_write_lm_evals_files(manager, tmp_path):
    lm = SlmJaxLM(model_lib.init_params(TINY, jax.random.key(1)), TINY,
                  tiny_vocab(tmp_path), batch_size=8)
    out = tmp_path / "out"
    results = harness.run_and_write(lm, list(lm_eval_tasks.TASKS), manager, str(out), limit=3)
    assert set(results["results"]) == set(lm_eval_tasks.TASKS)
    metrics = harness.scalar_metrics(results)
    assert 0.0 <= metrics["tiny_mc_acc"] <= 1.0 and 0.0 <= metrics["tiny_gen_exact_match"] <= 1.0
    assert metrics["tiny_ppl_word_perplexity"] > 1.0
    assert not any("stderr" in k or "alias" in k for k in metrics)

    files = os.listdir(out)
    saved = [f for f in files if f.startswith("results_") and f.endswith(".json")]
    assert len(saved) == 1
    assert json.loads((out / saved[0]).read_text())["results"]["tiny_mc"]["acc,none"] == \
        results["results"]["tiny_mc"]["acc,none"]
    for task in lm_eval_tasks.TASKS:
        sample_file, = [f for f in files if f.startswith(f"samples_{task}_")]
        samples = [json.loads(line) for line in (out / sample_file).read_text().splitlines()]
        assert len(samples) == min(3, len(lm_eval_tasks.DOCS[task]))  # limit=3
    mc = [json.loads(line) for line in (out / next(f for f in files if "tiny_mc" in f))
          .read_text().splitlines()]
    # Three choices, three (loglikelihood, is_greedy) answers per document.
    assert all(len(s["resps"]) == 3 for s in mc)


def test_unknown_tasks_and_bad_paths_are_refused(manager, tmp_path):
    with pytest.raises(ValueError, match="no task .*nonexistent_task"):
        harness.check_tasks(manager, ["tiny_mc", "nonexistent_task"])
    with pytest.raises(ValueError, match="does not exist"):
        harness.task_manager(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no lm-eval task"):
        harness.parse_tasks(" , ")
    assert harness.parse_tasks("gsm8k_cot, minerva_math") == ["gsm8k_cot", "minerva_math"]


def test_prepare_tasks_refuses_unknown_names_before_any_model_work(tmp_path):
    include = lm_eval_tasks.write_tasks(tmp_path)
    names, manager = harness.prepare_tasks("tiny_mc, tiny_gen", include, include_defaults=False)
    assert names == ["tiny_mc", "tiny_gen"] and {"tiny_mc", "tiny_gen"} <= set(manager.all_tasks)
    with pytest.raises(ValueError, match="no task .*nope"):
        harness.prepare_tasks("tiny_mc,nope", include, include_defaults=False)


def test_scalar_metrics_name_task_metric_and_filter():
    results = {"results": {"gsm8k_cot": {"alias": "gsm8k_cot", "exact_match,strict-match": 0.25,
                                         "exact_match_stderr,strict-match": 0.1,
                                         "exact_match,flexible-extract": 0.5},
                           "arc": {"acc,none": 1, "acc_stderr,none": "N/A"}}}
    assert harness.scalar_metrics(results) == {"gsm8k_cot_exact_match_strict-match": 0.25,
                                               "gsm8k_cot_exact_match_flexible-extract": 0.5,
                                               "arc_acc": 1.0}
