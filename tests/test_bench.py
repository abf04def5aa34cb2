"""The step benchmark prints one parseable JSON line per mode with the agreed keys."""

import json

from slm_jax import model as model_lib
from slm_jax import step_benchmark

TINY = model_lib.ModelConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                             mlp_dim=64, max_seq_len=64, dtype="float32")


def test_bench_json_lines(capsys):
    results = step_benchmark.bench(TINY, batch_size=8, seq_len=32, warmup_steps=1,
                                   timed_steps=2, reference_dtype="float32",
                                   select_tokens_count=4096)
    lines = [json.loads(ln) for ln in capsys.readouterr().out.splitlines() if ln.startswith("{")]
    assert results == lines
    select_lines = [ln for ln in lines if ln["mode"] == "select"]
    lines = [ln for ln in lines if ln["mode"] != "select"]
    assert [ln["mode"] for ln in lines] == ["clm", "slm_online", "slm_offline"]
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


def test_flops_per_token_counts_attention_and_excludes_the_embedding_gather():
    cfg = model_lib.ModelConfig(vocab_size=100, d_model=8, n_layers=1, n_heads=2, n_kv_heads=2,
                                mlp_dim=16, max_seq_len=16, dtype="float32")
    n_matmul = model_lib.count_params(cfg) - 100 * 8
    attn_fwd = 2 * 2 * 1 * 2 * 4 * 16 / 2
    assert step_benchmark.flops_per_token(cfg, 16) == 6 * n_matmul + 3 * attn_fwd
