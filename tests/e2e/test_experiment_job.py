"""The `experiment` job from the command line, end to end on a tiny model: the second
generated corpus and the accuracy curve through lm-eval (variants: test_experiment.py)."""

import json

import gin
import pytest

from slm_jax import main as main_lib


@pytest.fixture(autouse=True)
def fresh_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def test_experiment_on_the_forum_corpus_with_lm_eval_accuracy(capsys, tmp_path):
    work = tmp_path / "experiment"
    code = main_lib.main([
        "--gin_file=gin/runs/demo_experiment.gin", "--gin_file=gin/models/tiny.gin",
        f"--gin.experiment.work_dir={work}", "--gin.experiment.corpus=forum",
        "--gin.experiment.vocab_size=512", "--gin.experiment.base_steps=2",
        "--gin.experiment.reference_steps=2", "--gin.experiment.student_steps=2",
        "--gin.experiment.eval_every=2", "--gin.experiment.eval_base=True",
        "--gin.experiment.eval_problems=2", "--gin.experiment.num_fewshot=1",
        "--gin.experiment.max_new_tokens=4",
        "--gin.DataConfig.seq_len=64", "--gin.DataConfig.global_batch_size=8",
        "--gin.train.eval_batches=1", "--gin.run.compilation_cache_dir=None"])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    assert "| web tokens seen | CLM loss | SLM loss |" in out
    saved = json.loads((work / "results.json").read_text())
    for name in ("slm", "clm"):
        curve = saved["curves"][name]
        assert curve["tokens"] == [0, 1024]   # eval_base: the base model's point first
        assert all(0.0 <= a <= 1.0 for a in curve["accuracy"])  # lm-eval's accuracy, not NaN
    # The accuracy task: the forum corpus's layout, one solved exemplar, graded answers.
    yaml = (work / "lm_eval_task" / "heldout_problems.yaml").read_text()
    assert 'doc_to_text: "Problem: {{question}}\\nSolution:"' in yaml
    assert (work / "curves.png").stat().st_size > 0
