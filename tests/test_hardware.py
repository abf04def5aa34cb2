"""Hardware timers (slm_jax/hardware.py): the device peak and peak memory."""

from slm_jax import hardware


def test_device_peak_is_measured_once_on_cpu_and_memory_is_reported():
    peak, source = hardware.device_peak()
    assert peak > 1e9 and "measured" in source
    assert hardware.device_peak() == (peak, source)   # cached: the train log asks every run
    assert hardware.peak_memory_bytes() > 100 << 20   # a process with JAX loaded


def test_matmul_seconds_is_a_positive_best_time():
    assert 0 < hardware.matmul_seconds("float32", n=64, reps=2) < 10
