"""What the hardware can do, measured or looked up: matmul timings, the devices' peak
FLOP/s and the peak memory in use. The ground floor: jobs, the trainer and the reference's
dtype choice all time the machine through here."""

from __future__ import annotations

import functools
import logging
import resource
import time

import jax
import jax.numpy as jnp

# Dense bf16 peak per chip from the vendors' spec sheets (FLOP/s).
SPEC_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v4": 275e12,
                   "TPU v5p": 459e12, "TPU v5 lite": 197e12, "TPU v6 lite": 918e12}


def matmul_seconds(dtype="float32", n: int = 2048, reps: int = 5,
                   accumulate_fp32: bool = False) -> float:
    """Best time of an n^3 matmul through XLA (fp32 results when `accumulate_fp32`, the
    form the decoder uses for bf16 inputs on CPU)."""
    x = jnp.ones((n, n), dtype)
    result = jnp.float32 if accumulate_fp32 else None
    f = jax.jit(lambda a: jnp.matmul(a, a, preferred_element_type=result))
    f(x).block_until_ready()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f(x).block_until_ready()
        times.append(time.perf_counter() - t)
    return min(times)


def measured_matmul_peak(dtype="float32", n=2048, reps=5) -> float:
    """FLOP/s of a square matmul through XLA: the CPU's practical peak."""
    return 2 * n ** 3 / matmul_seconds(dtype, n, reps)


@functools.cache
def device_peak() -> tuple[float, str]:
    """(peak FLOP/s of all devices, where the figure comes from); measured once per process."""
    kind = jax.devices()[0].device_kind
    if jax.default_backend() == "cpu":
        return measured_matmul_peak(), "measured fp32 matmul (2048^3, XLA)"
    for name, peak in SPEC_PEAK_FLOPS.items():
        if name.lower() in kind.lower():
            return peak * jax.device_count(), f"spec bf16 dense peak of {kind}"
    return measured_matmul_peak("bfloat16", 8192), f"measured bf16 matmul on {kind}"


def peak_memory_bytes() -> int:
    """Peak device memory where the backend reports it; the process's peak RSS on CPU."""
    if jax.default_backend() == "cpu":
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    stats = jax.devices()[0].memory_stats() or {}
    return int(stats.get("peak_bytes_in_use", 0))


def _forward_matmul_seconds(dtype) -> float:
    return matmul_seconds(dtype, n=1024, reps=3, accumulate_fp32=True)


@functools.cache
def fastest_forward_dtype() -> str:
    """bf16 or fp32, whichever runs a frozen model's forward faster here (what
    ReferenceConfig.dtype = 'auto' means): bf16 on accelerators and on CPUs whose bf16
    matmuls measure faster than fp32 (AVX512-BF16, AMX); decided once per process."""
    if jax.default_backend() != "cpu":
        choice, why = "bfloat16", f"{jax.default_backend()} computes in bf16"
    else:
        bf16, fp32 = _forward_matmul_seconds(jnp.bfloat16), _forward_matmul_seconds(jnp.float32)
        choice = "bfloat16" if bf16 < 0.9 * fp32 else "float32"
        why = f"CPU matmul bf16 {bf16 * 1e3:.1f} ms vs fp32 {fp32 * 1e3:.1f} ms"
    logging.info("fastest forward dtype: %s (%s)", choice, why)
    return choice
