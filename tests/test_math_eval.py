"""The `eval` job and the in-training few-shot hook (slm_jax/jobs/math_eval.py), end to end on a tiny model."""

import json
import os

import gin
import pytest

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
    gin.clear_config()
    try:
        code = main_lib.main([
            "--gin_file=gin/models/tiny.gin", "--gin.run.job=train",
            f"--gin.train.run_dir={run_dir}", f"--gin.DataConfig.file_pattern={paths.web_tfrecord}",
            f"--gin.DataConfig.vocab_path={vocab}", "--gin.DataConfig.seq_len=64",
            "--gin.DataConfig.global_batch_size=8", "--gin.train.num_steps=2",
            "--gin.train.eval_every=1",
            "--gin.train.few_shot_eval=@FewShotEvalConfig()",
            f"--gin.FewShotEvalConfig.dataset={paths.eval_problems}",
            "--gin.FewShotEvalConfig.num_problems=3", "--gin.FewShotEvalConfig.n_shot=1",
            "--gin.FewShotEvalConfig.max_new_tokens=12"])
        assert code == 0
        evals = [json.loads(l) for l in (run_dir / "eval.jsonl").read_text().splitlines()]
        assert [e["step"] for e in evals] == [1, 2]
        assert all(0.0 <= e["eval_gsm8k_accuracy"] <= 1.0 for e in evals)
        assert os.listdir(run_dir / "tensorboard")

        gin.clear_config()
        out = tmp_path / "eval"
        code = evaluate.main([
            "--ckpt_dir", str(run_dir / "checkpoints"), "--gin_file", "gin/models/tiny.gin",
            "--tokenizer", vocab, "--data", f"gsm8k={paths.eval_problems}", "--out", str(out),
            "--num_problems", "4", "--n_shot", "1", "--max_new_tokens", "12",
            "--batch_size", "8"])
        assert code == 0
    finally:
        gin.clear_config()
    results = json.loads((out / "results.json").read_text())
    assert results["datasets"]["gsm8k"]["total"] == 4
    assert 0.0 <= results["datasets"]["gsm8k"]["accuracy"] <= 1.0
    rows = [json.loads(l) for l in (out / "predictions_gsm8k.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["n_shot"] in (0, 1) for r in rows)
    assert all(r["finish_reason"] in ("stop", "eos", "length") for r in rows)
    assert (out / "results.md").read_text().startswith("| dataset | n_shot |")
