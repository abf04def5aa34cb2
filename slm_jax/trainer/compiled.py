"""What a compiled program needs and does, read from the compiler: HBM per chip, FLOPs and
the step-time estimate (with scanned loops counted per trip), its collectives and the
attention kernel in it. The `compile` job reports these for every program of a run.

XLA's cost analysis counts a while loop's body once (HloCostAnalysis treats a loop as one
trip), so a model with scanned layers reads as one layer. `loop_scaled_cost` therefore
compiles unrolled twins of the program with 1 and 2 layers and extrapolates linearly to the
run's layer count: cost(L) = cost(1) + (L - 1) * (cost(2) - cost(1)).
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict

import numpy as np

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4,
                "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}
_SHAPE = re.compile(r"\b(pred|[suf]\d+|bf16)\[([\d,]*)\]")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) .*\{$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*?) ([\w\-]+)\(")
_CALLED = re.compile(r"(body|condition|calls|to_apply|branch_computations|called_computations)"
                     r"=\{?((?:%[\w.\-]+(?:, )?)+)\}?")
_BOUND = re.compile(r"constant\((\d+)\)")
# A multislice program is one slice's; what crosses slices (over the data-center network)
# leaves through sends to the megascale runtime, tagged with the collective they make up.
_CROSS_SLICE = re.compile(r'_xla_megascale_transfer_type="(\w+)"')


@dataclasses.dataclass(frozen=True)
class MemoryUse:
    """Bytes per chip of a compiled program (jax's memory_analysis)."""

    arguments: int
    outputs: int
    aliased: int        # outputs written into donated arguments: counted once
    temporaries: int
    code: int

    @property
    def total(self) -> int:
        return self.arguments + self.outputs - self.aliased + self.temporaries + self.code

    @classmethod
    def of(cls, compiled) -> "MemoryUse":
        m = compiled.memory_analysis()
        return cls(m.argument_size_in_bytes, m.output_size_in_bytes, m.alias_size_in_bytes,
                   m.temp_size_in_bytes, m.generated_code_size_in_bytes)


def cost(compiled) -> dict:
    """{"flops", "seconds"} per chip by XLA's cost analysis (loops counted once); seconds
    is None where the cost model gives none (libtpu answers some whole-slice programs on
    v5e/v6e with a negative time)."""
    analysis = compiled.cost_analysis() or {}
    if isinstance(analysis, list):   # older jax: one dict per computation
        analysis = analysis[0] if analysis else {}
    seconds = float(analysis.get("optimal_seconds", 0.0))
    return {"flops": float(analysis.get("flops", 0.0)), "seconds": seconds if seconds > 0 else None}


def loop_scaled_cost(cost_1: dict, cost_2: dict, layers: int) -> dict:
    """The cost of `layers` layers from unrolled twins with 1 and 2 layers."""
    return {k: cost_1[k] + (layers - 1) * (cost_2[k] - cost_1[k]) for k in cost_1}


def _shape_bytes(text: str) -> int:
    total = 0
    for dtype, dims in _SHAPE.findall(text):
        size = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
        total += size * _DTYPE_BYTES.get(dtype, 4)
    return total


def _computations(hlo_text: str) -> tuple[dict[str, list[str]], str]:
    """({name: instruction lines}, the entry computation's name)."""
    computations, name, entry = {}, None, ""
    for line in hlo_text.splitlines():
        match = _COMPUTATION.match(line)
        if match:
            name = match.group(1)
            computations[name] = []
            entry = name if line.startswith("ENTRY") else entry
        elif name and line.strip() != "}":
            computations[name].append(line)
    return computations, entry


def _trip_count(condition: list[str]) -> int:
    """A scan's loop condition compares its counter with the trip count, a constant."""
    bounds = [int(b) for line in condition for b in _BOUND.findall(line)]
    return max(bounds) if bounds else 1


def _executions(computations: dict[str, list[str]], entry: str) -> dict[str, int]:
    """How often each computation runs per program execution (loop bodies per trip)."""
    runs: dict[str, int] = defaultdict(int)
    stack = [(entry, 1)]
    while stack:
        name, times = stack.pop()
        runs[name] += times
        for line in computations.get(name, ()):
            called = dict((kind, [c.strip().lstrip("%") for c in names.split(",")])
                          for kind, names in _CALLED.findall(line))
            trips = _trip_count(computations.get(called["condition"][0], [])) \
                if "condition" in called else 1
            for kind, names in called.items():
                for child in names:
                    if child in computations and kind != "condition":
                        stack.append((child, times * (trips if kind == "body" else 1)))
    return runs


def collectives(hlo_text: str) -> dict[str, dict]:
    """{kind: {"count", "bytes"}} of the collectives a program runs per execution, loop
    bodies counted once per trip. Bytes are the result's (for an all-gather the gathered
    array, for a reduce-scatter the scattered shard). Those crossing slices are counted
    apart as "dcn-all-reduce" etc. (what each chip sends to other slices)."""
    computations, entry = _computations(hlo_text)
    runs = _executions(computations, entry)
    found: dict[str, dict] = {}
    for name, lines in computations.items():
        for line in lines:
            match = _INSTRUCTION.match(line)
            if not match:
                continue
            op = match.group(3).removesuffix("-start")
            cross = _CROSS_SLICE.search(line) if op == "send" else None
            if cross:
                op = "dcn-" + cross.group(1).lower().replace("_", "-")
            elif op not in COLLECTIVES:
                continue
            times = runs.get(name, 0)
            if times:
                totals = found.setdefault(op, {"count": 0, "bytes": 0})
                totals["count"] += times
                totals["bytes"] += times * _shape_bytes(match.group(2))
    return found


def attention_kernels(hlo_text: str) -> list[str]:
    """The Pallas/Mosaic kernels in a program (TPU custom calls), by name: e.g.
    splash_mha_fwd_segmented_residuals, splash_mha_dkv_... and splash_mha_dq_..."""
    names = set()
    for line in hlo_text.splitlines():
        if 'custom_call_target="tpu_custom_call"' in line:
            match = _INSTRUCTION.match(line)
            if match:
                names.add(re.sub(r"\.\d+$", "", match.group(1)))
    return sorted(names)


_OP_NAME = re.compile(r'op_name="([^"]*)"')


def compiler_loops(hlo_text: str) -> list[tuple[str, int]]:
    """(op it came from, trips) of each while loop the compiler made itself, e.g. a matmul
    split into 8 steps to fit HBM. The program's own loops (scanned layers, loss chunks,
    micro-batches, decoding) come from a `while` op; these come from a dot_general. XLA's
    cost analysis counts their bodies once: their FLOPs are undercounted."""
    computations, _ = _computations(hlo_text)
    found = []
    for lines in computations.values():
        for line in lines:
            match = _INSTRUCTION.match(line)
            if not match or match.group(3) != "while":
                continue
            op = _OP_NAME.search(line)
            condition = re.search(r"condition=%([\w.\-]+)", line)
            if op and not op.group(1).endswith("while") and condition:
                found.append((op.group(1), _trip_count(computations.get(condition.group(1), []))))
    return found
