"""Run metrics (slm_jax/trainer/metrics_log.py): metrics.jsonl, eval.jsonl, TensorBoard, console."""

import errno
import json

import jax
import jax.numpy as jnp
import pytest

from slm_jax import disk, hardware
from slm_jax.trainer.metrics_log import MetricsLogger, WandbConfig


def test_train_and_eval_lines_go_to_their_files_with_throughput(tmp_path, capsys):
    logger = MetricsLogger(str(tmp_path), total_steps=4, tokens_per_step=100, name="t",
                           progress=False, flops_per_token=1e6)
    logger.log(2, {"loss": jnp.float32(2.5), "selected_loss": 3.0, "data_wait_s": 0.0})
    logger.log(2, {"loss": 1.25}, prefix="eval_")
    logger.preempted(3)
    logger.close()
    train = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert train[0]["step"] == 2 and train[0]["loss"] == 2.5 and train[0]["tokens_per_s"] > 0
    assert "step_s" in train[0] and evals == [{"step": 2, "eval_loss": 1.25}]
    # Where the time went: MFU from the model FLOPs and the measured peak, data wait, memory.
    want_mfu = 1e6 * train[0]["tokens_per_s"] / hardware.device_peak()[0]
    assert abs(train[0]["mfu"] - want_mfu) <= 1e-9 * want_mfu
    assert train[0]["data_wait_share"] == 0.0 and train[0]["peak_mem_bytes"] > 0
    assert list((tmp_path / "tensorboard").iterdir())
    out = capsys.readouterr().out
    assert "[t] step 2/4  loss 2.5000  selected 3.0000" in out and "  mfu " in out
    assert "  data 0%  " in out
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


def test_wandb_offline_logs_the_same_metrics_and_a_resumed_run_keeps_its_id(tmp_path,
                                                                            monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = WandbConfig(project="slm-jax-test", mode="offline")
    ids = []
    for start in (0, 2):
        logger = MetricsLogger(str(tmp_path), total_steps=4, start_step=start, tokens_per_step=10,
                               progress=False, wandb=config)
        ids.append(logger._wandb.id)
        logger.log(start + 2, {"loss": 1.5 - start / 4})
        logger.close()
    assert ids[0] == ids[1] == (tmp_path / "wandb_run_id").read_text()
    runs = list((tmp_path / "wandb").glob(f"offline-run-*-{ids[0]}/run-{ids[0]}.wandb"))
    assert len(runs) == 2 and all(r.stat().st_size > 0 for r in runs)


def test_wandb_is_off_by_default_and_only_process_zero_logs(tmp_path, monkeypatch):
    MetricsLogger(str(tmp_path / "a"), total_steps=1, tokens_per_step=1, progress=False).close()
    assert not (tmp_path / "a" / "wandb").exists()
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    logger = MetricsLogger(str(tmp_path / "b"), total_steps=1, tokens_per_step=1, progress=False,
                           wandb=WandbConfig(project="p", mode="offline"))
    assert logger._wandb is None and not (tmp_path / "b").exists()


def test_time_in_evals_is_left_out_of_step_time_and_throughput(tmp_path, monkeypatch):
    from slm_jax.trainer import metrics_log
    clock = [100.0]
    monkeypatch.setattr(metrics_log, "time", type("Clock", (), {
        "perf_counter": staticmethod(lambda: clock[0])}))
    logger = MetricsLogger(str(tmp_path), total_steps=8, tokens_per_step=100, progress=False)
    clock[0] += 4.0                      # steps 1-4: 1 s each
    logger.log(4, {"loss": 1.0})
    with logger.paused():
        clock[0] += 30.0                 # a 30 s eval
        logger.log(4, {"loss": 2.0}, prefix="eval_")
    clock[0] += 8.0                      # steps 5-8: 2 s each
    second = logger.log(8, {"loss": 1.0})
    logger.close()
    assert second["step_s"] == pytest.approx(2.0) and second["tokens_per_s"] == pytest.approx(50.0)


def test_a_line_that_meets_a_full_disk_is_cut_back_off_the_file(tmp_path):
    logger = MetricsLogger(str(tmp_path), total_steps=2, tokens_per_step=10, progress=False)
    logger.log(1, {"loss": jnp.float32(2.0)})
    whole = (tmp_path / "metrics.jsonl").read_bytes()

    class HalfWritten:   # the disk fills up in the middle of the line
        name = logger._jsonl[""].name

        def __init__(self, raw):
            self.raw, self.calls = raw, 0

        def tell(self):
            return self.raw.tell()

        def truncate(self, size):
            return self.raw.truncate(size)

        def write(self, data):
            self.calls += 1
            if self.calls > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.raw.write(data[: len(data) // 2])

    logger._jsonl[""] = HalfWritten(logger._jsonl[""])
    with pytest.raises(disk.DiskFullError, match=r"no space left in .* for metrics.jsonl at step 2 "
                                                 r".*its earlier lines and the checkpoints are intact"):
        logger.log(2, {"loss": jnp.float32(1.0)})
    assert (tmp_path / "metrics.jsonl").read_bytes() == whole
    logger._jsonl[""] = logger._jsonl[""].raw
    logger.close()
