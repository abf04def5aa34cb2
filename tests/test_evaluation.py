"""The `eval` job (slm_jax/jobs/evaluation.py: built-in math prompts, or lm-eval tasks through
slm_jax/evals/harness.py) on a checkpoint trained with the in-training eval hooks
(slm_jax/evals/train_evals.py), end to end on a tiny model."""

import json
import os

import gin
import pytest

from tests import lm_eval_tasks
from tests.tiny_corpus import tiny_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return tiny_corpus(root, seed=2, n_web_docs=120, n_clean_docs=60, spm_on_clean=True)


def test_train_hook_then_eval_job_end_to_end(corpus, tmp_path):
    from slm_jax import evaluate
    from slm_jax import main as main_lib
    paths, vocab = corpus
    run_dir = tmp_path / "run"
    tasks = lm_eval_tasks.write_tasks(tmp_path)
    gin.clear_config()
    try:
        code = main_lib.main([
            "--gin_file=gin/models/tiny.gin", "--gin.run.job=train",
            f"--gin.train.run_dir={run_dir}", f"--gin.DataConfig.file_pattern={paths.web_tfrecord}",
            f"--gin.DataConfig.vocab_path={vocab}", "--gin.DataConfig.seq_len=64",
            "--gin.DataConfig.global_batch_size=8", "--gin.train.num_steps=2",
            "--gin.train.eval_every=1", "--gin.train.eval_first=True",
            "--gin.train.few_shot_eval=@FewShotEvalConfig()",
            f"--gin.FewShotEvalConfig.dataset={paths.eval_problems}",
            "--gin.FewShotEvalConfig.num_problems=3", "--gin.FewShotEvalConfig.n_shot=1",
            "--gin.FewShotEvalConfig.max_new_tokens=12",
            "--gin.train.evals=[@HarnessEval()]", "--gin.HarnessEval.tasks=tiny_mc,tiny_gen",
            f"--gin.HarnessEval.include_path={tasks}", "--gin.HarnessEval.include_defaults=False",
            "--gin.HarnessEval.limit=2"])
        assert code == 0
        evals = [json.loads(l) for l in (run_dir / "eval.jsonl").read_text().splitlines()]
        assert [e["step"] for e in evals] == [0, 1, 2]  # 0: eval_first, the initial params
        assert all(0.0 <= e["eval_gsm8k_accuracy"] <= 1.0 for e in evals)
        # lm-eval's metrics of the live params, beside the built-in accuracy.
        assert all(0.0 <= e["eval_tiny_mc_acc"] <= 1.0 and "eval_tiny_gen_exact_match" in e
                   for e in evals)
        assert os.listdir(run_dir / "tensorboard")

        gin.clear_config()
        out = tmp_path / "eval"
        code = evaluate.main([
            "--ckpt_dir", str(run_dir / "checkpoints"), "--gin_file", "gin/models/tiny.gin",
            "--tokenizer", vocab, "--data", f"gsm8k={paths.eval_problems}", "--out", str(out),
            "--num_problems", "4", "--n_shot", "1", "--max_new_tokens", "12",
            "--batch_size", "8"])
        assert code == 0

        gin.clear_config()
        harness_out = tmp_path / "harness"
        code = evaluate.main([
            "--ckpt_dir", str(run_dir / "checkpoints"), "--tokenizer", vocab,
            "--tasks", "tiny_mc,tiny_gen", "--include_path", tasks, "--out", str(harness_out),
            "--num_problems", "2", "--gin.eval.include_defaults=False"])
        assert code == 0  # the ModelConfig came from the run's config.gin
    finally:
        gin.clear_config()
    saved = [f for f in os.listdir(harness_out) if f.startswith("results_")]
    harness_results = json.loads((harness_out / saved[0]).read_text())
    assert set(harness_results["results"]) == {"tiny_mc", "tiny_gen"}
    assert sorted(f.split("_2")[0] for f in os.listdir(harness_out)
                  if f.startswith("samples_")) == ["samples_tiny_gen", "samples_tiny_mc"]
    results = json.loads((out / "results.json").read_text())
    assert results["datasets"]["gsm8k"]["total"] == 4
    assert 0.0 <= results["datasets"]["gsm8k"]["accuracy"] <= 1.0
    rows = [json.loads(l) for l in (out / "predictions_gsm8k.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["n_shot"] in (0, 1) for r in rows)
    assert all(r["finish_reason"] in ("stop", "eos", "length") for r in rows)
    assert (out / "results.md").read_text().startswith("| dataset | n_shot |")
