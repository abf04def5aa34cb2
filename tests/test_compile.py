"""The `compile` job (slm_jax/jobs/compile.py) on the command line: a run file's programs
through the TPU compiler, its report and its exit code."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_an_oversized_run_exits_nonzero_with_what_to_change(tmp_path):
    """Through the command line: a run file with required path macros left unset, a model
    several GB a chip too big for v5e:2x2; libtpu's start-up lines go to log.txt, not the console."""
    gin_file = tmp_path / "big.gin"
    gin_file.write_text("\n".join([
        "include 'gin/models/tiny.gin'", "RUN_DIR = %gin.REQUIRED", "train.run_dir = %RUN_DIR",
        "ModelConfig.d_model = 8192", "ModelConfig.mlp_dim = 32768", "ModelConfig.n_heads = 64",
        "ModelConfig.n_kv_heads = 8", "ModelConfig.n_layers = 6", "DataConfig.seq_len = 256",
        "DataConfig.global_batch_size = 8", "MeshConfig.data = 1", "MeshConfig.fsdp = -1",
        "run.job = 'compile'", "compile.topology = 'v5e:2x2'"]))
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "slm_jax.main", f"--gin_file={gin_file}",
         f"--gin.compile.out_dir={out}", "--gin.compile.count_flops=False"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert "train_step does not fit in the HBM of a TPU v5 lite chip" in error, result.stderr
    assert "GiB over" in error and "--gin.train.grad_accum" in error
    assert "--gin.compile.search=True" in error
    assert "train_step" in result.stdout and "NO FIT" in result.stdout   # the table
    assert "TPU_ACCELERATOR_TYPE" not in result.stderr + result.stdout
    assert "TPU_ACCELERATOR_TYPE" in (out / "log.txt").read_text()
    [row] = [json.loads(line) for line in (out / "compile.jsonl").read_text().splitlines()]
    assert row["fits"] is False and row["needed"] > row["capacity"] > 15 * 2**30
