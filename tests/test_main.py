"""The command line: gin composition, one-line errors, a real train run that resumes, the demo.

The table of bad inputs (each a one-line error that leaves the run alone) is test_bad_input.py.
"""

import json
import os
import subprocess
import sys

import gin
import pytest

from slm_jax import main as main_lib
from tests.tiny_corpus import tiny_corpus


@pytest.fixture(autouse=True)
def fresh_gin():
    gin.clear_config()
    yield
    gin.clear_config()


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return tiny_corpus(root, seed=1, n_web_docs=300, n_clean_docs=150, n_eval_docs=40,
                       spm_on_clean=True)


def train_flags(corpus, run_dir, *extra):
    paths, vocab = corpus
    return ["--gin_file=gin/models/tiny.gin", "--gin.run.job=train",
            f"--gin.train.run_dir={run_dir}", f"--gin.DataConfig.file_pattern={paths.web_tfrecord}",
            f"--gin.DataConfig.vocab_path={vocab}", "--gin.DataConfig.seq_len=64",
            "--gin.DataConfig.global_batch_size=8", "--gin.train.log_every=2",
            "--gin.OptimizerConfig.learning_rate=3e-3", *extra]


def run_main(capsys, flags):
    code = main_lib.main(flags)
    return code, capsys.readouterr()


def test_gin_typo_is_one_clear_line_from_the_real_cli(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "slm_jax.main", "--gin_file=gin/demo.gin",
                           "--gin.train.num_stepz=3"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("slm_jax: error:")]
    assert len(lines) == 1 and "num_stepz" in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_missing_required_value_names_the_binding(capsys):
    code, out = run_main(capsys, ["--gin_file=gin/models/tiny.gin", "--gin.run.job=train"])
    assert code == 2
    assert "run_dir" in out.err and len(out.err.strip().splitlines()) == 1


def test_renamed_configurable_names_the_new_one(capsys):
    """The `eval` job's configurable was `math_eval`: an old binding fails in one line that
    names the new one."""
    code, out = run_main(capsys, ["--gin_file=gin/models/tiny.gin", "--gin.run.job=eval",
                                  "--gin.math_eval.tasks=gsm8k_cot"])
    assert code == 2
    assert out.err.strip().splitlines() == [
        "math_eval.tasks was renamed: bind eval.tasks instead (e.g. --gin.eval.tasks=...)"]


@pytest.mark.parametrize("old, new, value", [
    ("train.loss_chunk_size", "ModelConfig.loss_chunk_size", "0"),
    ("bench.loss_chunk_size", "ModelConfig.loss_chunk_size", "0"),
    ("demo.ratio", "SelectionConfig.ratio", "0.5"),
    ("experiment.ratio", "SelectionConfig.ratio", "0.5"),
    ("analyze.ratio", "SelectionConfig.ratio", "0.5"),
    ("bench.ratio", "SelectionConfig.ratio", "0.5"),
])
def test_settings_with_one_home_answer_their_old_bindings_in_one_line(capsys, old, new, value):
    code, out = run_main(capsys, ["--gin_file=gin/models/tiny.gin", f"--gin.{old}={value}"])
    assert code == 2
    assert out.err.strip().splitlines() == [
        f"{old} was renamed: bind {new} instead (e.g. --gin.{new}=...)"]


def test_train_logs_checkpoints_and_resumes(capsys, corpus, tmp_path):
    run_dir = tmp_path / "run"
    code, out = run_main(capsys, train_flags(corpus, run_dir, "--gin.train.num_steps=4",
                                             "--gin.CheckpointConfig.every_steps=2"))
    assert code == 0, out.err
    lines = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [ln["step"] for ln in lines] == [2, 4]
    assert all("loss" in ln and "tokens_per_s" in ln for ln in lines)
    assert "step 4/4" in out.out + out.err
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["2", "4"]
    assert os.listdir(run_dir / "tensorboard")
    assert "ModelConfig.d_model = 64" in (run_dir / "config.gin").read_text()
    assert json.loads((run_dir / "run_record.json").read_text())["git_sha"]
    # A later run with more steps continues from step 4 instead of starting over.
    gin.clear_config()
    code, out = run_main(capsys, train_flags(corpus, run_dir, "--gin.train.num_steps=6",
                                             "--gin.CheckpointConfig.every_steps=2"))
    assert code == 0, out.err
    lines = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [ln["step"] for ln in lines] == [2, 4, 6]


def test_later_flags_win(corpus, tmp_path):
    files, bindings = main_lib.parse_flags(
        ["--gin_file=gin/models/tiny.gin", "--gin.ModelConfig.d_model=96",
         "--gin.ModelConfig.d_model=48"])
    main_lib.parse_config(files, bindings)
    from slm_jax.model import ModelConfig
    assert ModelConfig().d_model == 48 and ModelConfig().vocab_size == 512


def test_help_is_usage_on_stdout_and_exit_zero(capsys):
    assert main_lib.main(["--help"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("usage: python -m slm_jax.main") and "run.job" in out.out
    assert out.err == ""
    assert main_lib.main(["--bogus"]) == 2
    assert "unknown flag '--bogus'" in capsys.readouterr().err
