"""Hardware timers (slm_jax/hardware.py): the device peak and peak memory."""

import jax.numpy as jnp
import pytest

from slm_jax import hardware


def test_device_peak_is_measured_once_on_cpu_and_memory_is_reported():
    peak, source = hardware.device_peak()
    assert peak > 1e9 and "measured" in source
    assert hardware.device_peak() == (peak, source)   # cached: the train log asks every run
    assert hardware.peak_memory_bytes() > 100 << 20   # a process with JAX loaded


def test_matmul_seconds_is_a_positive_best_time():
    assert 0 < hardware.matmul_seconds("float32", n=64, reps=2) < 10


@pytest.mark.parametrize("backend, bf16_s, fp32_s, want", [
    ("cpu", 0.5, 1.0, "bfloat16"),    # a CPU with bf16 dot-product units
    ("cpu", 0.95, 1.0, "float32"),    # within noise: fp32 (no bf16 rounding for nothing)
    ("cpu", 1.4, 1.0, "float32"),     # bf16 emulated: slower
    ("gpu", 9.0, 1.0, "bfloat16"),    # accelerators always compute in bf16
])
def test_auto_picks_bf16_only_where_it_is_faster(monkeypatch, backend, bf16_s, fp32_s, want):
    monkeypatch.setattr(hardware, "target_platform", lambda: backend)
    monkeypatch.setattr(hardware, "_forward_matmul_seconds",
                        lambda dtype: bf16_s if dtype == jnp.bfloat16 else fp32_s)
    hardware._fastest_forward_dtype.cache_clear()
    try:
        assert hardware.fastest_forward_dtype() == want
    finally:
        hardware._fastest_forward_dtype.cache_clear()


@pytest.mark.parametrize("kind, peak, hbm_gib", [
    ("TPU v5", 459e12, 95), ("TPU v5 lite", 197e12, 16), ("TPU v6 lite", 918e12, 32),
    ("TPU v4", 275e12, 32), ("NVIDIA H100 80GB HBM3", 989e12, 80), ("TPU v7x", None, None)])
def test_spec_tables_are_keyed_by_the_device_kinds_the_runtimes_report(kind, peak, hbm_gib):
    assert hardware.spec_peak_flops(kind) == peak
    assert hardware.spec_hbm_bytes(kind) == (hbm_gib and hbm_gib * 2**30)
