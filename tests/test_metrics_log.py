"""Run metrics (slm_jax/jobs/metrics_log.py): metrics.jsonl, eval.jsonl, TensorBoard, console."""

import json

import jax.numpy as jnp

from slm_jax.jobs.metrics_log import MetricsLogger


def test_train_and_eval_lines_go_to_their_files_with_throughput(tmp_path, capsys):
    logger = MetricsLogger(str(tmp_path), total_steps=4, tokens_per_step=100, name="t",
                           progress=False)
    logger.log(2, {"loss": jnp.float32(2.5), "selected_loss": 3.0})
    logger.log(2, {"loss": 1.25}, prefix="eval_")
    logger.preempted(3)
    logger.close()
    train = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert train[0]["step"] == 2 and train[0]["loss"] == 2.5 and train[0]["tokens_per_s"] > 0
    assert "step_s" in train[0] and evals == [{"step": 2, "eval_loss": 1.25}]
    assert list((tmp_path / "tensorboard").iterdir())
    out = capsys.readouterr().out
    assert "[t] step 2/4  loss 2.5000  selected 3.0000" in out
    assert "[t] step 2  eval_loss 1.2500" in out
    assert "[t] preempted at step 3; checkpoint saved" in out


def test_a_resumed_log_appends(tmp_path):
    for start in (0, 2):
        logger = MetricsLogger(str(tmp_path), total_steps=4, start_step=start,
                               tokens_per_step=10, progress=False)
        logger.log(start + 2, {"loss": 1.0})
        logger.close()
    steps = [json.loads(ln)["step"] for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4]
