"""What the hardware can do, measured or looked up: the platform a program is built for,
matmul timings, the devices' peak FLOP/s and HBM, and the peak memory in use. The ground
floor: jobs, the trainer, the model's kernel choices and the reference's dtype choice all
ask here.

A program's platform is that of the devices it is compiled for (the mesh), not the
process's default backend: a CPU host compiling for a TPU topology builds the TPU program.
"""

from __future__ import annotations

import functools
import logging
import resource
import time

import jax
import jax.numpy as jnp

# Dense bf16 peak per chip from the vendors' spec sheets (FLOP/s), keyed by the
# `device_kind` the runtime reports: libtpu calls a v5p "TPU v5", a v5e "TPU v5 lite" and a
# v6e "TPU v6 lite". Matched exactly for TPUs ("TPU v5" is a prefix of "TPU v5 lite").
SPEC_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v4": 275e12,
                   "TPU v5": 459e12, "TPU v5 lite": 197e12, "TPU v6 lite": 918e12}
# HBM per chip (bytes) by the same names: what a compiled program must fit in.
SPEC_HBM_BYTES = {"TPU v4": 32 * 2**30, "TPU v5": 95 * 2**30, "TPU v5 lite": 16 * 2**30,
                  "TPU v6 lite": 32 * 2**30, "H100": 80 * 2**30, "H200": 141 * 2**30,
                  "A100": 80 * 2**30}


def target_device():
    """(platform, device_kind) of the devices the program being built runs on: the active
    mesh's (`jax.set_mesh`, e.g. inside Runtime.activate(), also while tracing) else the
    default backend's first device."""
    device = jax.sharding.get_abstract_mesh().abstract_device
    if device is not None:
        return device.platform, device.device_kind
    first = jax.devices()[0]
    return first.platform, first.device_kind


def target_platform() -> str:
    """"cpu", "gpu" or "tpu": the platform of `target_device()` (CUDA/ROCm read as gpu)."""
    platform = target_device()[0]
    return "gpu" if platform in ("cuda", "rocm") else platform


def _spec_lookup(table: dict, kind: str):
    """The entry of `table` for a device kind: TPUs by exact name, GPUs by substring
    ("NVIDIA H100 80GB HBM3" is an H100)."""
    if kind in table:
        return table[kind]
    for name, value in table.items():
        if not name.startswith("TPU") and name.lower() in kind.lower():
            return value
    return None


def spec_peak_flops(kind: str) -> float | None:
    """Dense bf16 peak FLOP/s of one chip of `kind`, or None when the table lacks it."""
    return _spec_lookup(SPEC_PEAK_FLOPS, kind)


def spec_hbm_bytes(kind: str) -> int | None:
    """HBM bytes of one chip of `kind`, or None when the table lacks it."""
    return _spec_lookup(SPEC_HBM_BYTES, kind)


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
    peak = spec_peak_flops(kind)
    if peak is not None:
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


def fastest_forward_dtype() -> str:
    """bf16 or fp32, whichever runs a frozen model's forward faster where it runs (what
    ReferenceConfig.dtype = 'auto' means) on the target platform (`target_platform`): bf16
    on accelerators and on CPUs whose bf16 matmuls measure faster than fp32 (AVX512-BF16,
    AMX); decided (a CPU timed) once per process and platform."""
    return _fastest_forward_dtype(target_platform())


@functools.cache
def _fastest_forward_dtype(platform: str) -> str:
    if platform != "cpu":
        choice, why = "bfloat16", f"{platform} computes in bf16"
    else:
        bf16, fp32 = _forward_matmul_seconds(jnp.bfloat16), _forward_matmul_seconds(jnp.float32)
        choice = "bfloat16" if bf16 < 0.9 * fp32 else "float32"
        why = f"CPU matmul bf16 {bf16 * 1e3:.1f} ms vs fp32 {fp32 * 1e3:.1f} ms"
    logging.info("fastest forward dtype: %s (%s)", choice, why)
    return choice
