"""The step benchmark (slm_jax/jobs/step_benchmark.py), the FLOP count, and the scripts built on it."""

import dataclasses
import json
import os
import subprocess
import sys

from slm_jax import model as model_lib
from slm_jax.jobs import step_benchmark
from slm_jax.slm.reference import ReferenceConfig
from slm_jax.slm.selection import SelectionConfig
from slm_jax.trainer import flops

TINY = model_lib.ModelConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                             mlp_dim=64, max_seq_len=64, dtype="float32")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(ln) for ln in stdout.splitlines() if ln.startswith("{")]


def test_bench_json_lines(capsys):
    results = step_benchmark.bench(TINY, batch_size=8, seq_len=32, warmup_steps=1,
                                   timed_steps=2, reference=ReferenceConfig(dtype="float32"),
                                   selection=SelectionConfig(ratio=0.6), select_tokens_count=4096,
                                   weightings=("dense", "prob"))
    lines = json_lines(capsys.readouterr().out)
    assert results == lines
    select_lines = [ln for ln in lines if ln["mode"] == "select"]
    lines = [ln for ln in lines if ln["mode"] != "select"]
    assert [ln["mode"] for ln in lines] == ["clm", "slm_online", "slm_offline",
                                            "slm_offline:dense", "slm_offline:prob"]
    assert all(ln["ratio_to_hard"] > 0 for ln in lines[3:])   # each weighting beside hard top-k
    lines = lines[:3]
    # Every selection method is timed; the exact ones give the default's mask.
    assert [ln["method"] for ln in select_lines] == ["bisect", "top_k", "sort", "approx"]
    for line in select_lines[:3]:
        assert line["same_mask_as_bisect"] and line["selected"] > 0 and line["select_s"] > 0
    for line in lines:
        for key in ["mode", "step_s", "tokens_per_s", "mfu", "peak_mem_bytes", "select_share",
                    "ratio_to_clm", "model_flops_per_token"]:
            assert key in line, key
        assert line["step_s"] > 0 and 0 < line["mfu"] < 1.5
        assert line["tokens_per_s"] == 8 * 32 / line["step_s"]
    clm, online, _ = lines
    # The online reference forward adds 2N FLOPs per token: 1/3 of the 6N step.
    assert abs(online["model_flops_per_token"] / clm["model_flops_per_token"] - 4 / 3) < 1e-9


def test_bench_runs_a_reference_of_another_size_and_counts_its_own_flops(capsys):
    """ReferenceConfig.model (a reference smaller or larger than the student) is the model
    the SLM-online step runs: its own params and shardings, its own forward FLOPs."""
    bigger = dataclasses.replace(TINY, d_model=64, n_layers=3, mlp_dim=128)
    clm, online = step_benchmark.bench(
        TINY, batch_size=8, seq_len=32, warmup_steps=1, timed_steps=1,
        modes=("clm", "slm_online"), select_tokens_count=0,
        reference=ReferenceConfig(dtype="float32", model=bigger),
        selection=SelectionConfig(ratio=0.6))
    assert clm["model_flops_per_token"] == flops.flops_per_token(TINY, 32)
    assert online["model_flops_per_token"] == (flops.flops_per_token(TINY, 32)
                                               + flops.forward_flops_per_token(bigger, 32))
    assert online["model_flops_per_token"] > 4 / 3 * clm["model_flops_per_token"]


def test_torch_comparison_step_runs_both_modes_and_reference_dtypes():
    """benchmarks/torch_slm_step.py (the PyTorch side of compare_torch.py) on tiny shapes."""
    script = os.path.join(REPO, "benchmarks", "torch_slm_step.py")
    for reference_dtype in ("float32", "bfloat16"):
        out = subprocess.run(
            [sys.executable, script, "--batch=2", "--seq_len=16", "--vocab=64", "--d_model=16",
             "--layers=1", "--heads=2", "--kv_heads=1", "--mlp=32", "--warmup_steps=1",
             "--timed_steps=2", f"--reference_dtype={reference_dtype}"],
            check=True, capture_output=True, text=True).stdout
        lines = json_lines(out)
        assert [ln["mode"] for ln in lines] == ["clm", "slm_online"]
        for line in lines:
            assert line["reference_dtype"] == reference_dtype
            assert len(line["step_times_s"]) == 2 and line["step_s"] > 0
            assert line["tokens_per_s"] == 2 * 16 / line["step_s"]


def _max_batch_module():
    import importlib.util
    path = os.path.join(REPO, "benchmarks", "max_batch.py")
    spec = importlib.util.spec_from_file_location("max_batch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, path


def test_largest_fitting_batch_search_finds_the_threshold_in_few_tries():
    largest_fitting = _max_batch_module()[0].largest_fitting
    for limit in (1, 5, 64, 100):
        for threshold in range(0, limit + 3):
            asked = []

            def fits(b):
                asked.append(b)
                return b <= threshold
            assert largest_fitting(fits, 1, limit) == min(threshold, limit), (limit, threshold)
            assert len(asked) == len(set(asked)) <= 2 * limit.bit_length() + 1
            assert all(1 <= b <= limit for b in asked)


def test_max_batch_script_runs_the_bench_per_batch():
    _, script = _max_batch_module()
    out = subprocess.run(
        [sys.executable, script, "--gin_file=gin/models/tiny.gin", "--unit=8", "--limit=16",
         "--gin.bench.seq_len=32", "--gin.bench.warmup_steps=1", "--gin.bench.timed_steps=1"],
        check=True, capture_output=True, text=True, cwd=REPO).stdout
    lines = json_lines(out)
    # 8 CPU devices (conftest): batches are whole rows per device.
    assert [(ln["batch_size"], ln["fits"]) for ln in lines[:-1]] == [(8, True), (16, True)]
    summary = lines[-1]
    assert summary["largest_batch"] == 16 and summary["bench_mode"] == "slm_online"
    assert summary["at_largest"]["tokens_per_s"] == 16 * 32 / summary["at_largest"]["step_s"]
