"""Compiling a run's programs for a target without running them: whether each fits the
chip's HBM, the compiler's FLOPs and step-time estimate beside the analytic count, its
collectives and attention kernel; and the search for the cheapest setting that fits.

A `ProgramSpec` builds a program for any ModelConfig, so the same spec gives the program
the run executes and the unrolled 1- and 2-layer twins that count its scanned loops
(slm_jax/trainer/compiled.py).
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable

import jax

from slm_jax import hardware
from slm_jax.trainer import compiled as compiled_lib

# The TPU compiler's two ways of saying so: "the total memory required for HLO temporaries
# (22.55G) exceeds available HBM (15.75G)" and "Used 20.5G of 15.75G hbm".
_NEEDED = re.compile(r"required[^(]*\(([\d.]+)([KMGT])\) exceeds available HBM \(([\d.]+)([KMGT])\)"
                     r"|Used ([\d.]+)([KMGT]) of ([\d.]+)([KMGT]) hbm", re.I)
_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


@dataclasses.dataclass(frozen=True)
class ProgramSpec:
    """One program of a run: `build(student, reference)` returns it (a trainer.programs
    Program) for these model configs; `analytic_flops(student, reference)` is what it
    computes per chip; `times`: the run executes the twins' program this many times per
    execution of the real one (grad_accum micro-batches). `layers`: whether its FLOPs scale
    with the layer count (False: decoding, whose loop over tokens twins cannot count)."""

    name: str
    build: Callable
    analytic_flops: Callable | None = None
    model_flops: float = 0.0          # the MFU numerator per chip (6N + attention, + 2N ref)
    twin_build: Callable | None = None
    times: int = 1


class DoesNotFit(Exception):
    """The TPU compiler refused a program for lack of HBM."""

    def __init__(self, message: str, needed: int | None, capacity: int | None):
        super().__init__(message)
        self.needed, self.capacity = needed, capacity


def _compile(program, runtime):
    with runtime.activate():
        lowered = program.lower()
    try:
        return lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        text = str(e)
        if "RESOURCE_EXHAUSTED" not in text and "Ran out of memory" not in text:
            raise
        match = _NEEDED.search(text)
        needed = capacity = None
        if match:
            groups = [g for g in match.groups() if g is not None]
            needed = int(float(groups[0]) * _UNITS[groups[1].upper()])
            capacity = int(float(groups[2]) * _UNITS[groups[3].upper()])
        raise DoesNotFit(text.split("\n")[0][:400], needed, capacity) from e


def _twin(config, layers: int):
    return config and dataclasses.replace(config, n_layers=layers, scan_layers=False)


def scaled_cost(spec: ProgramSpec, student, reference, runtime) -> dict:
    """The compiler's FLOPs and seconds per chip with every layer counted: unrolled twins
    with 1 and 2 layers, extrapolated to the real counts (student and reference apart when
    their layer counts differ), times `spec.times`."""
    build = spec.twin_build or spec.build

    def cost(s_layers, r_layers):
        return compiled_lib.cost(_compile(build(_twin(student, s_layers),
                                                _twin(reference, r_layers)), runtime))

    base = cost(1, 1)
    same = reference is None or reference.n_layers == student.n_layers
    per_student = {k: v - base[k] for k, v in cost(2, 2 if same else 1).items()}
    total = {k: base[k] + (student.n_layers - 1) * per_student[k] for k in base}
    if not same:
        per_reference = {k: v - base[k] for k, v in cost(1, 2).items()}
        total = {k: total[k] + (reference.n_layers - 1) * per_reference[k] for k in total}
    return {k: v * spec.times for k, v in total.items()}


def measure(spec: ProgramSpec, student, reference, runtime, *, count_flops: bool = True) -> dict:
    """Compiles `spec`'s program for `runtime`'s devices and reads what it needs and does.

    Raises DoesNotFit when the compiler refuses it for lack of HBM."""
    start = time.perf_counter()
    executable = _compile(spec.build(student, reference), runtime)
    seconds = time.perf_counter() - start
    memory = compiled_lib.MemoryUse.of(executable)
    text = executable.as_text()
    kind = runtime.mesh.devices.flat[0].device_kind
    capacity = hardware.spec_hbm_bytes(kind)
    row = {"program": spec.name, "compile_s": round(seconds, 1), "device_kind": kind,
           "chips": runtime.mesh.size, "fits": True,
           "hbm": {**dataclasses.asdict(memory), "total": memory.total, "capacity": capacity,
                   "headroom": capacity and capacity - memory.total},
           "collectives": compiled_lib.collectives(text),
           "kernels": compiled_lib.attention_kernels(text)}
    if count_flops and spec.analytic_flops is not None:
        row.update(_flops(spec, student, reference, runtime, row["kernels"], kind))
    return row


def _flops(spec, student, reference, runtime, kernels, kind) -> dict:
    scaled = scaled_cost(spec, student, reference, runtime)
    analytic = spec.analytic_flops(student, reference)
    # Pallas kernels are custom calls XLA's count cannot see into: their analytic FLOPs
    # are added to the compiler's figure (reported apart as "pallas_flops").
    pallas = spec.analytic_flops(student, reference, only_pallas=True) if kernels else 0.0
    compiler = scaled["flops"] + pallas
    peak = hardware.spec_peak_flops(kind)
    seconds = scaled["seconds"]
    return {"flops": {"compiler": compiler, "pallas": pallas, "analytic": analytic,
                      "compiler_vs_analytic": round(compiler / analytic, 3) if analytic else None,
                      "counted": "unrolled 1- and 2-layer twins, extrapolated per layer"},
            "est_step_s": seconds,
            "mfu_bound": (round(spec.model_flops / (seconds * peak), 3)
                          if seconds > 0 and peak and spec.model_flops else None)}
