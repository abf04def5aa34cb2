"""The `demo` job (slm_jax/jobs/demo.py) end to end from the command line: the three SLM steps and the table."""

import json

import gin
import pytest

from slm_jax import main as main_lib


@pytest.fixture(autouse=True)
def fresh_gin():
    gin.clear_config()
    yield
    gin.clear_config()



def run_main(capsys, flags):
    code = main_lib.main(flags)
    return code, capsys.readouterr()


def test_demo_end_to_end_prints_the_table(capsys, tmp_path):
    work = tmp_path / "demo"
    code, out = run_main(capsys, [
        "--gin_file=gin/demo.gin", "--gin_file=gin/models/tiny.gin",
        f"--gin.demo.work_dir={work}", "--gin.demo.vocab_size=512",
        "--gin.demo.reference_steps=3", "--gin.demo.student_steps=3",
        "--gin.DataConfig.seq_len=64", "--gin.DataConfig.global_batch_size=8",
        "--gin.train.eval_batches=2"])
    assert code == 0, out.err
    assert "| SLM student |" in out.out and "| CLM student |" in out.out
    results = json.loads((work / "results.json").read_text())
    assert set(results) >= {"reference", "clm", "slm", "tokens"}
    assert results["tokens"] == 3 * 8 * 64


def test_ctrl_c_in_a_run_stops_the_demo(capsys, tmp_path, monkeypatch):
    """A run that stops for Ctrl-C/SIGTERM (summary "preempted") ends the demo there:
    the later runs do not start and no table is printed; the same command resumes."""
    from slm_jax.jobs import demo as demo_lib
    started = []

    def train(run_dir, **kwargs):
        started.append(run_dir.rsplit("/", 1)[-1])
        return {"preempted": True, "step": 1}
    monkeypatch.setattr(demo_lib.train_lib, "train", train)
    code, out = run_main(capsys, [
        "--gin_file=gin/demo.gin", f"--gin.demo.work_dir={tmp_path / 'demo'}",
        "--gin.demo.vocab_size=512"])
    assert code == 0 and started == ["reference"]
    assert "stopped during reference" in out.out and "| SLM student |" not in out.out
