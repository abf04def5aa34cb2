"""Compiling a run's programs for a target without running them: whether each fits the
chip's HBM, the compiler's FLOPs and step-time estimate beside the analytic count, its
collectives and attention kernel; and the search for the cheapest setting that fits.

A `ProgramSpec` builds a program for any ModelConfig, so the same spec gives the program
the run executes and the unrolled 1- and 2-layer twins that count its scanned loops
(slm_jax/trainer/compiled.py).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Callable

import jax
import numpy as np

from slm_jax import hardware
from slm_jax import model as model_lib
from slm_jax.data import pipeline
from slm_jax.model import attention
from slm_jax.model.generate import round_up
from slm_jax.parallel import sharding
from slm_jax.slm.optim import OptimizerConfig, make_optimizer
from slm_jax.slm.reference import ReferenceConfig
from slm_jax.slm.selection import SelectionConfig
from slm_jax.trainer import compiled as compiled_lib
from slm_jax.trainer import flops, programs

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
    twins = [(cost(2, 2 if same else 1), student.n_layers - 1)]
    if not same:
        twins.append((cost(1, 2), reference.n_layers - 1))
    scaled = {}
    for key in base:
        # A layer costs something (nothing when the program does not run that model). A
        # figure the cost model does not give, or whose twins shrink with more layers,
        # leaves nothing to extrapolate from: it is None, the other stays.
        values = [base[key]] + [twin[key] for twin, _ in twins]
        per_layer = [None if None in values else twin[key] - base[key] for twin, _ in twins]
        if None in per_layer or any(p < 0 for p in per_layer):
            logging.warning("%s: the twins' %s cannot be extrapolated (1 layer: %s, more: %s)",
                            spec.name, key, base[key], [twin[key] for twin, _ in twins])
            scaled[key] = None
            continue
        total = base[key] + sum(p * extra for p, (_, extra) in zip(per_layer, twins))
        scaled[key] = total * spec.times
    return scaled


def measure(spec: ProgramSpec, student, reference, runtime, *, count_flops: bool = True) -> dict:
    """Compiles `spec`'s program for `runtime`'s devices and reads what it needs and does.

    Raises DoesNotFit when the compiler refuses it for lack of HBM, or when what it compiled
    needs more than the chip has (the compiler may accept such a program, e.g. for v5e)."""
    start = time.perf_counter()
    executable = _compile(spec.build(student, reference), runtime)
    seconds = time.perf_counter() - start
    memory = compiled_lib.MemoryUse.of(executable)
    kind = runtime.mesh.devices.flat[0].device_kind
    capacity = hardware.spec_hbm_bytes(kind)
    if capacity and memory.total > capacity:
        raise DoesNotFit(f"the compiled program needs {memory.total / 2**30:.2f} GiB of HBM a "
                         f"chip (memory_analysis), the chip has {capacity / 2**30:.2f} GiB",
                         memory.total, capacity)
    text = executable.as_text()
    row = {"program": spec.name, "compile_s": round(seconds, 1), "device_kind": kind,
           "chips": runtime.mesh.size, "fits": True,
           "compiler_loops": len(compiled_lib.compiler_loops(text)),
           "hbm": {**dataclasses.asdict(memory), "total": memory.total, "capacity": capacity,
                   "headroom": capacity and capacity - memory.total},
           "collectives": compiled_lib.collectives(text),
           "kernels": compiled_lib.attention_kernels(text)}
    if count_flops and spec.analytic_flops is not None:
        row.update(_flops(spec, student, reference, runtime, row["kernels"], kind))
    return row


def _flops(spec, student, reference, runtime, kernels, kind) -> dict:
    try:
        scaled = scaled_cost(spec, student, reference, runtime)
    except DoesNotFit as e:
        logging.warning("%s: FLOPs and step time not counted (a twin: %s)", spec.name, e)
        return {"flops": None, "est_step_s": None, "mfu_bound": None}
    analytic = spec.analytic_flops(student, reference)
    # Pallas kernels are custom calls XLA's count cannot see into: their analytic FLOPs
    # are added to the compiler's figure (reported apart as "pallas_flops").
    pallas = spec.analytic_flops(student, reference, only_pallas=True) if kernels else 0.0
    compiler = None if scaled["flops"] is None else scaled["flops"] + pallas
    peak = hardware.spec_peak_flops(kind)
    seconds = scaled["seconds"]
    return {"flops": {"compiler": compiler, "pallas": pallas, "analytic": analytic,
                      "compiler_vs_analytic": (round(compiler / analytic, 3)
                                               if analytic and compiler is not None else None),
                      "counted": "unrolled 1- and 2-layer twins, extrapolated per layer; "
                                 "loops the compiler makes itself (compiler_loops) and the "
                                 "loss's chunk loop are counted once"},
            "est_step_s": seconds,
            "mfu_bound": (round(spec.model_flops / (seconds * peak), 3)
                          if seconds and peak and spec.model_flops else None)}


@dataclasses.dataclass(frozen=True)
class RunConfigs:
    """What the run's `train` job would be called with, as far as its programs go."""

    model: model_lib.ModelConfig
    data: pipeline.DataConfig
    selection: SelectionConfig
    optimizer: OptimizerConfig
    reference: ReferenceConfig
    mesh: sharding.MeshConfig
    num_steps: int
    grad_accum: int
    scored: bool
    eval_data: pipeline.DataConfig | None
    generation: programs.GenerationShape | None


def program_specs(run: RunConfigs, runtime) -> list[ProgramSpec]:
    """The programs the run executes, each buildable for any layer count (fit.ProgramSpec).
    Call inside runtime.activate(): kernels and the reference's dtype follow the mesh."""
    chips, data = runtime.mesh.size, run.data
    tokens, length = data.global_batch_size * data.seq_len, data.seq_len
    online = run.selection.mode == "slm"
    ref_forward = run.reference.forward_config(run.model) if run.selection.selects else None
    self_reference = run.reference.self_reference() if online else None
    kernel = lambda config: attention.resolve_attention(config, length)  # noqa: E731
    tx, schedule = make_optimizer(run.optimizer, run.num_steps)

    def train(batch, accum):
        return lambda s, r: programs.train_program(
            runtime, s, run.selection, tx, schedule, batch_size=batch, seq_len=length,
            grad_accum=accum, reference=r if online else None, scored=run.scored,
            self_reference=self_reference)

    def train_flops(s, r, only_pallas=False):
        r = r if online else None
        return flops.train_program_flops(s, length, kernel(s), r, r and kernel(r),
                                         only_pallas) * tokens / chips

    specs = [ProgramSpec(
        "train_step", train(data.global_batch_size, run.grad_accum), train_flops,
        flops.slm_step_flops_per_token(run.model, ref_forward if online else None, length)
        * tokens / chips, twin_build=train(data.global_batch_size // run.grad_accum, 1),
        times=run.grad_accum)]
    if ref_forward is not None and self_reference is None:
        specs.append(ProgramSpec(
            "score_step", lambda s, r: programs.score_program(
                runtime, r, batch_size=data.global_batch_size, seq_len=length),
            lambda s, r, only_pallas=False: flops.forward_program_flops(
                r, length, kernel(r), only_pallas) * tokens / chips,
            flops.forward_flops_per_token(ref_forward, length) * tokens / chips))
    if run.eval_data is not None:
        batch, seq = run.eval_data.global_batch_size, run.eval_data.seq_len
        specs.append(ProgramSpec(
            "eval_step", lambda s, r: programs.eval_program(runtime, s, batch_size=batch,
                                                            seq_len=seq),
            lambda s, r, only_pallas=False: flops.forward_program_flops(
                s, seq, attention.resolve_attention(s, seq), only_pallas) * batch * seq / chips,
            flops.forward_flops_per_token(run.model, seq) * batch * seq / chips))
    if run.generation is not None:
        shape = dataclasses.replace(run.generation, batch_size=round_up(
            run.generation.batch_size, runtime.data_parallel_size))
        for i, name in enumerate(("generate_prefill", "generate_decode")):
            specs.append(ProgramSpec(name, lambda s, r, i=i: programs.generation_programs(
                runtime, s, shape)[i]))
    return specs


def measure_program(spec: ProgramSpec, run: RunConfigs, runtime, count_flops: bool = True) -> dict:
    """`measure` for the configs of a run; a program the compiler refuses for lack of HBM
    is a row with fits False, the HBM it needed and the chip's."""
    ref = run.reference.forward_config(run.model) if run.selection.selects else None
    logging.info("compiling %s for %d %s chips (remat %s, grad_accum %d)%s", spec.name,
                 runtime.mesh.size, runtime.mesh.devices.flat[0].device_kind, run.model.remat,
                 run.grad_accum, " and its 1- and 2-layer twins" if count_flops else "")
    try:
        return measure(spec, run.model, ref, runtime, count_flops=count_flops)
    except DoesNotFit as e:
        logging.info("%s does not fit: %s", spec.name, e)
        return {"program": spec.name, "fits": False, "needed": e.needed, "capacity": e.capacity,
                "argument_bytes": _argument_bytes(spec.build(run.model, ref)),
                "device_kind": runtime.mesh.devices.flat[0].device_kind, "error": str(e)}


def _argument_bytes(program) -> int:
    """Bytes a chip holds of the program's arguments (its shard of each)."""
    total = 0
    for a in jax.tree.leaves(program.args):
        shard = a.sharding.shard_shape(a.shape) if a.sharding is not None else a.shape
        total += int(np.prod(shard, dtype=np.int64)) * getattr(a.dtype, "itemsize", 8)
    return total


def search_fit(run: RunConfigs, runtime) -> list[dict]:
    """For each remat policy, the smallest grad_accum whose train step fits (bisection over
    the divisors that keep micro-batches whole per chip), with its estimated step time."""
    dp, batch = runtime.data_parallel_size, run.data.global_batch_size
    accums = [g for g in range(1, batch + 1) if batch % g == 0 and (batch // g) % dp == 0]
    found = []
    for remat in ("none", "dots", "full"):
        trial = dataclasses.replace(run, model=dataclasses.replace(run.model, remat=remat))

        def row_for(g):
            candidate = dataclasses.replace(trial, grad_accum=g)
            return measure_program(program_specs(candidate, runtime)[0], candidate, runtime, False)

        lo, hi, best = 0, len(accums) - 1, None
        while lo <= hi:
            mid = (lo + hi) // 2
            row = row_for(accums[mid])
            if row["fits"]:
                best, hi = (accums[mid], row), mid - 1
            else:
                lo = mid + 1
        if best is None:
            found.append({"remat": remat, "fits": False})
            continue
        g, row = best
        candidate = dataclasses.replace(trial, grad_accum=g)
        ref = candidate.reference.forward_config(candidate.model) \
            if candidate.selection.selects else None
        spec = program_specs(candidate, runtime)[0]
        try:
            seconds = scaled_cost(spec, candidate.model, ref, runtime)["seconds"]
        except DoesNotFit:
            seconds = None
        found.append({"remat": remat, "grad_accum": g, "fits": True,
                      "hbm_total": row["hbm"]["total"], "est_step_s": seconds})
    fastest = min((f for f in found if f["fits"] and f["est_step_s"] is not None),
                  key=lambda f: f["est_step_s"], default=None)
    for f in found:
        f["fastest"] = f is fastest
    return found


