"""Throughput accounting (slm_jax/jobs/perf.py): the FLOP count, the device peak, peak memory."""

from slm_jax import model as model_lib
from slm_jax.jobs import perf


def test_flops_per_token_counts_attention_and_excludes_the_embedding_gather():
    cfg = model_lib.ModelConfig(vocab_size=100, d_model=8, n_layers=1, n_heads=2, n_kv_heads=2,
                                mlp_dim=16, max_seq_len=16, dtype="float32")
    n_matmul = model_lib.count_params(cfg) - 100 * 8
    attn_fwd = 2 * 2 * 1 * 2 * 4 * 16 / 2
    assert perf.flops_per_token(cfg, 16) == 6 * n_matmul + 3 * attn_fwd


def test_device_peak_is_measured_once_on_cpu_and_memory_is_reported():
    peak, source = perf.device_peak()
    assert peak > 1e9 and "measured" in source
    assert perf.device_peak() == (peak, source)   # cached: the train log asks every run
    assert perf.peak_memory_bytes() > 100 << 20   # a process with JAX loaded
