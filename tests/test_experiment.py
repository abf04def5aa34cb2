"""Pieces of the miniature experiment (slm_jax/jobs/experiment.py): grading, curve crossing,
greedy decoding, plot."""

import json
import os
import types

import jax
import numpy as np
import gin
import pytest

from slm_jax.cli_errors import with_flags
from slm_jax.jobs import experiment
from slm_jax import model as model_lib
from slm_jax.model.generate import greedy_generate

TINY = model_lib.ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                             mlp_dim=64, max_seq_len=32, dtype="float32")


def test_answers_are_graded_by_the_eval_jobs_grader():
    # One grading path: the experiment's accuracy task (evals/problem_task.py) uses math_eval's grader.
    from slm_jax.evals.problem_task import process_results
    correct = lambda text, answer: process_results({"answer": answer}, [text])["accuracy"] == 1.0
    assert correct("a = 3\n#### 1,254\nQuestion:", "1254")
    assert correct("#### -7", "-7") and correct("#### 2.5", "2.5")
    assert correct("x = 15 / 3 = 5.\nThe answer is 5.", "5")
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


def test_selection_variants_are_named_and_checked_before_any_work():
    selections = experiment.variant_selections(
            [("excess", "batch"), ("student", "batch"), ["excess", "document"]], 0.6)
    assert list(selections) == ["slm", "slm_student_batch", "slm_excess_document"]
    assert all(s.mode == "slm_offline" and s.ratio == 0.6 and r is None
               for s, r in selections.values())
    assert selections["slm_excess_document"][0].scope == "document"
    with pytest.raises(ValueError, match="set SelectionConfig.score=") as e:
        experiment.variant_selections([("loss", "batch")], 0.6)
    # The command line spells the fix as a flag.
    assert "set --gin.SelectionConfig.score=" in with_flags(str(e.value), "--gin.")
    with pytest.raises(ValueError, match="each entry is \\(score, scope\\), "):
        experiment.variant_selections(["student"], 0.6)
    weighted = experiment.variant_selections(
            [("excess", "batch", "dense"), ("entropy", "batch"), ("excess", "batch", "hard")], 0.6)
    assert list(weighted) == ["slm_excess_batch_dense", "slm_entropy_batch", "slm"]
    assert weighted["slm_excess_batch_dense"][0].weighting == "dense"
    with pytest.raises(ValueError, match="weighting='soft' is not one of"):
        experiment.variant_selections([("excess", "batch", "soft")], 0.6)
    # A self-reference trains online against the student's own history; a global scope
    # stays offline (it ranks against the scored corpus).
    own = experiment.variant_selections(
            [("excess", "batch", "hard", "ema"), ("excess", "global")], 0.6)
    assert list(own) == ["slm_excess_batch_ema", "slm_excess_global"]
    selection, reference = own["slm_excess_batch_ema"]
    assert selection.mode == "slm" and reference.source == "ema"
    assert own["slm_excess_global"][0].mode == "slm_offline"
    with pytest.raises(ValueError, match="ReferenceConfig.source='self' is not one of"):
        experiment.variant_selections([("excess", "batch", "hard", "self")], 0.6)


def test_sweep_trains_each_variant_on_the_same_tokens_and_tabulates(tmp_path, monkeypatch):
    """The whole job with training, scoring and data replaced by fakes: the plumbing only."""
    trained = {}

    def fake_train(run_dir, *, selection, data=None, **kwargs):
        name = os.path.basename(run_dir)
        trained[name] = (selection, data, kwargs.get("scored_data"), kwargs.get("reference"))
        final = {"clm": 2.0, "slm": 1.5, "slm_student_batch": 2.5}.get(name, 1.0)
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, "eval.jsonl"), "w") as f:
            for step, loss in [(10, 3.0), (20, final)]:
                f.write(json.dumps({"step": step, "eval_loss": loss}) + "\n")
        return {"eval_loss": 1.0}

    data = types.SimpleNamespace(seed=0, global_batch_size=2, seq_len=5, vocab_path="v")
    corpus = types.SimpleNamespace(web_tfrecord="w", clean_tfrecord="c", eval_tfrecord="e",
                                   eval_problems="p", exemplars="x")
    monkeypatch.setattr(experiment, "prepare_demo_data",
                        lambda *a, **k: (corpus, lambda *a, **k: data))
    monkeypatch.setattr(experiment, "train_lib", types.SimpleNamespace(train=fake_train))
    monkeypatch.setattr(experiment, "scoring", types.SimpleNamespace(score=lambda *a, **k: None))
    monkeypatch.setattr(experiment, "problems_eval", lambda *a, **k: None)
    monkeypatch.setattr(experiment, "plot_curves", lambda *a, **k: None)

    gin.bind_parameter("SelectionConfig.ratio", 0.6)  # the one ratio binding
    try:
        summary = experiment.experiment(
            str(tmp_path),
            selection_variants=[("student", "batch"), ("excess", "document"), ("excess", "batch")])
    finally:
        gin.clear_config()
    students = ["slm", "slm_student_batch", "slm_excess_document", "clm"]
    assert [n for n in trained if n not in ("base", "reference")] == students
    assert all(trained[n][1] is data and trained[n][2] == str(tmp_path / "scored")
               for n in students)
    assert trained["slm_student_batch"][0].score == "student"
    assert trained["slm_student_batch"][3] is None                 # no self-reference
    assert all(trained[n][0].ratio == 0.6 for n in students[:-1]) and trained["clm"][0].ratio == 1
    assert trained["slm_excess_document"][0].scope == "document"
    variants = summary["variants"]
    assert list(variants) == ["slm_student_batch", "slm_excess_document", "slm"]
    assert variants["slm_excess_document"]["tokens_to_reach_clm_final_loss"] == 150
    assert variants["slm_student_batch"]["tokens_to_reach_clm_final_loss"] is None
    assert variants["slm"]["final_loss"] == 1.5
    table = (tmp_path / "results.md").read_text()
    assert "| slm_excess_document | excess | document | hard | checkpoint | 150 | 1.0000 |" in table
    assert "| slm_student_batch | student | batch | hard | checkpoint | not reached | 2.5000 |" in table
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["curves"]) >= set(students)


def test_own_data_and_base_checkpoint_replace_the_embedded_corpus(tmp_path, monkeypatch):
    """Your file patterns feed the runs (clean -> reference, web -> students, held-out ->
    evals), the base checkpoint replaces the base run, and eval hooks with their metric make
    the accuracy curve. Training and scoring are fakes: the plumbing only."""
    trained = {}

    def fake_train(run_dir, *, selection, data=None, **kwargs):
        name = os.path.basename(run_dir)
        trained[name] = dict(data=data, **kwargs)
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, "eval.jsonl"), "w") as f:
            for step, loss in [(10, 3.0), (20, 2.0 if name == "clm" else 1.5)]:
                f.write(json.dumps({"step": step, "eval_loss": loss,
                                    "eval_gsm8k_cot_exact_match": step / 100}) + "\n")
        return {"eval_loss": 1.0}

    def no_demo_corpus(*a, **k):
        raise AssertionError("the embedded corpus must not be generated")
    monkeypatch.setattr(experiment, "prepare_demo_data", no_demo_corpus)
    monkeypatch.setattr(experiment, "train_lib", types.SimpleNamespace(train=fake_train))
    monkeypatch.setattr(experiment, "scoring", types.SimpleNamespace(score=lambda *a, **k: None))
    monkeypatch.setattr(experiment, "plot_curves", lambda *a, **k: None)
    hook = object()
    experiment.experiment(str(tmp_path), web_files="/d/web-*.tfrecord",
                          clean_files="/d/clean-*.tfrecord", heldout_files="/d/held-*.tfrecord",
                          vocab_path="/ckpt/smollm2", base_checkpoint="/ckpt/smollm2",
                          evals=[hook], accuracy_metric="gsm8k_cot_exact_match")
    assert "base" not in trained
    assert trained["reference"]["data"].file_pattern == "/d/clean-*.tfrecord"
    assert trained["reference"]["init_checkpoint"] == "/ckpt/smollm2"
    for name in ("slm", "clm"):
        run = trained[name]
        assert run["data"].file_pattern == "/d/web-*.tfrecord"
        assert run["data"].vocab_path == "/ckpt/smollm2"
        assert run["eval_data"].file_pattern == "/d/held-*.tfrecord"
        assert run["init_checkpoint"] == "/ckpt/smollm2" and run["evals"] == [hook]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["curves"]["slm"]["accuracy"] == [0.1, 0.2]


def test_own_data_needs_every_split_named_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="--gin.experiment.heldout_files=.*"
                                         "--gin.experiment.vocab_path="):
        experiment.experiment(str(tmp_path), web_files="/w", clean_files="/c")
    assert not os.listdir(tmp_path)


def test_a_tokenizer_alone_tokenizes_the_generated_corpus(tmp_path, monkeypatch):
    """vocab_path without file patterns: the chosen generated corpus, that tokenizer, its
    held-out problems as the lm-eval accuracy task with its own prompt layout."""
    seen = {}

    def fake_prepare(work_dir, **kwargs):
        seen.update(kwargs)
        paths = types.SimpleNamespace(web_tfrecord="w", clean_tfrecord="c", eval_tfrecord="e",
                                      eval_problems="p.jsonl", exemplars="x.jsonl")
        data = types.SimpleNamespace(seed=0, global_batch_size=2, seq_len=5,
                                     vocab_path=kwargs["vocab_path"])
        return paths, lambda *a, **k: data

    def fake_problems_eval(work_dir, problems, **kwargs):
        seen["eval"] = dict(problems=problems, **kwargs)
        return "hook"

    def fake_train(run_dir, *, selection, data=None, **kwargs):
        seen.setdefault("evals", {})[os.path.basename(run_dir)] = kwargs.get("evals")
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, "eval.jsonl"), "w") as f:
            f.write(json.dumps({"step": 1, "eval_loss": 1.0,
                                "eval_heldout_problems_accuracy": 0.5}) + "\n")
        return {"eval_loss": 1.0}
    monkeypatch.setattr(experiment, "prepare_demo_data", fake_prepare)
    monkeypatch.setattr(experiment, "problems_eval", fake_problems_eval)
    monkeypatch.setattr(experiment, "train_lib", types.SimpleNamespace(train=fake_train))
    monkeypatch.setattr(experiment, "scoring", types.SimpleNamespace(score=lambda *a, **k: None))
    monkeypatch.setattr(experiment, "plot_curves", lambda *a, **k: None)
    experiment.experiment(str(tmp_path), corpus="forum", vocab_path="/ckpt/smollm2",
                          base_checkpoint="/ckpt/smollm2", num_fewshot=3)
    assert seen["corpus"] == "forum" and seen["vocab_path"] == "/ckpt/smollm2"
    assert seen["eval"]["problems"] == "p.jsonl" and seen["eval"]["exemplars"] == "x.jsonl"
    assert seen["eval"]["labels"] == ("Problem", "Solution") and seen["eval"]["num_fewshot"] == 3
    assert seen["evals"]["slm"] == seen["evals"]["clm"] == ["hook"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["curves"]["clm"]["accuracy"] == [0.5]


def test_unknown_corpus_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="unknown corpus 'owm'.*embedded.*forum"):
        experiment.experiment(str(tmp_path), corpus="owm")
    assert not os.listdir(tmp_path)


def test_a_preempted_run_stops_the_job_for_the_same_command_to_resume(tmp_path, monkeypatch):
    """Ctrl-C during the reference: nothing after it runs (no scoring with a half-trained
    reference, no students); the summary says preempted."""
    trained, scored = [], []

    def fake_train(run_dir, **kwargs):
        trained.append(os.path.basename(run_dir))
        return {"eval_loss": 1.0, "preempted": trained[-1] == "reference"}
    data = types.SimpleNamespace(seed=0, global_batch_size=2, seq_len=5, vocab_path="v")
    paths = types.SimpleNamespace(web_tfrecord="w", clean_tfrecord="c", eval_tfrecord="e",
                                  eval_problems="p", exemplars="x")
    monkeypatch.setattr(experiment, "prepare_demo_data", lambda *a, **k: (paths, lambda *a, **k: data))
    monkeypatch.setattr(experiment, "train_lib", types.SimpleNamespace(train=fake_train))
    monkeypatch.setattr(experiment, "scoring", types.SimpleNamespace(score=lambda *a, **k: scored.append(1)))
    assert experiment.experiment(str(tmp_path)) == {"preempted": True}
    assert trained == ["base", "reference"] and not scored
    assert not (tmp_path / "results.json").exists()
