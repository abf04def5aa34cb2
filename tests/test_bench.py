"""`python -m slm_jax.bench` (slm_jax/bench.py): the step benchmark as its own command."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_command_prints_one_json_line_per_mode_and_method():
    flags = ["--gin_file=gin/models/tiny.gin", "--gin.ModelConfig.max_seq_len=32",
             "--gin.ModelConfig.dtype='float32'", "--gin.bench.batch_size=8",
             "--gin.bench.seq_len=32", "--gin.bench.warmup_steps=1", "--gin.bench.timed_steps=1",
             "--gin.bench.select_tokens_count=4096", "--gin.bench.select_methods=['bisect']",
             "--gin.ReferenceConfig.dtype='float32'"]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    proc = subprocess.run([sys.executable, "-m", "slm_jax.bench", *flags], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert [ln["mode"] for ln in lines] == ["clm", "slm_online", "slm_offline", "select"]
    assert lines[0]["ratio_to_clm"] == 1.0 and all(ln["step_s"] > 0 for ln in lines[:3])
    assert lines[1]["reference_dtype"] == "float32" and lines[3]["method"] == "bisect"


def test_bench_help_is_its_own_usage(capsys):
    from slm_jax import bench
    assert bench.main(["--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: python -m slm_jax.bench")
