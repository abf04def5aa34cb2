"""The `compile` job: a run's programs compiled for a TPU slice that is not here.

    python -m slm_jax.main --gin_file=gin/runs/rho1_math_1b.gin \\
        --gin.run.job=compile --gin.compile.topology=v5p:4x4x4 [--gin.MeshConfig.num_slices=2]

From any host with libtpu installed (requirements-tpu.txt) and no TPU, data, tokenizer or
checkpoint, it compiles with the TPU compiler exactly what the run's `train` job would
execute on that slice (the run's shardings, dtypes, remat, batch and mode): the train step,
the reference's score step where one runs, the held-out eval step where `train.eval_data`
is set, and prefill + decode where few-shot or harness evals generate. Per program it
prints one JSON line and a table row: HBM per chip against the chip's, compile seconds,
the compiler's FLOPs beside the analytic count, the compiler's step-time estimate and the
MFU bound it implies, the collectives and the attention kernels in the program.

A program that does not fit exits non-zero with what to change; `compile.search=True`
finds the smallest `train.grad_accum` and the cheapest remat policy that fit.
"""

from __future__ import annotations

import json
import os

import gin

from slm_jax import console
from slm_jax import model as model_lib
from slm_jax.data import pipeline
from slm_jax.evals import train_evals
from slm_jax.model import attention
from slm_jax.parallel import sharding
from slm_jax.parallel import topology as topology_lib
from slm_jax.parallel.runtime import Runtime
from slm_jax.slm.optim import OptimizerConfig
from slm_jax.slm.reference import ReferenceConfig
from slm_jax.slm.selection import SelectionConfig
from slm_jax.trainer import checks, fit, programs

UNREAD = "<not read by compile>"


def fill_required_macros() -> list[str]:
    """Gives every `NAME = %gin.REQUIRED` macro (run_dir, data files, checkpoints) a
    placeholder: compile reads none of them. Call before gin.finalize()."""
    from gin import config as gin_config   # gin has no public list of its macros
    names = [scope for (scope, selector), values in list(gin_config._CONFIG.items())
             if selector == "gin.macro" and repr(values.get("value")) == "%gin.REQUIRED"]
    for name in names:
        gin.bind_parameter(f"{name}/gin.macro.value", UNREAD)
    return names


def run_configs_of_train_job() -> fit.RunConfigs:
    """What the run's `train` job would be called with (its gin bindings), as far as its
    programs go."""
    bound = gin.get_bindings("train")
    evals = [bound.get("few_shot_eval")] + list(bound.get("evals", ()))
    return fit.RunConfigs(model=bound.get("model") or model_lib.ModelConfig(),
                          data=bound.get("data") or pipeline.DataConfig(file_pattern=UNREAD,
                                                                        vocab_path=UNREAD),
                          selection=bound.get("selection") or SelectionConfig(),
                          optimizer=bound.get("optimizer") or OptimizerConfig(),
                          reference=bound.get("reference") or ReferenceConfig(),
                          mesh=bound.get("mesh") or sharding.MeshConfig(),
                          num_steps=bound.get("num_steps", 1000),
                          grad_accum=bound.get("grad_accum", 1),
                          scored=bool(bound.get("scored_data")), eval_data=bound.get("eval_data"),
                          generation=_generation_shape(evals, bound.get("model")
                                                       or model_lib.ModelConfig()))


def _generation_shape(evals, model) -> programs.GenerationShape | None:
    """The largest batch a generating eval runs: its batch size, prompts padded up to what
    `max_new_tokens` leaves under max_seq_len (slm_jax/model/generate.py's widest bucket)."""
    shapes = [(e.batch_size, e.max_new_tokens) for e in evals
              if isinstance(e, train_evals.FewShotEvalConfig)]
    shapes += [(e.batch_size, e.max_gen_toks) for e in evals
               if isinstance(e, train_evals.HarnessEval)]
    if not shapes:
        return None
    batch, new = max(shapes)
    return programs.GenerationShape(batch, model.max_seq_len - new, new)


def _gib(n) -> str:
    return "-" if n is None else f"{n / 2**30:.2f}"


def _kernels(row: dict) -> str:
    """"splash x4" for splash's fwd/dq/dkv kernels; "-" when XLA ops do the attention."""
    names = row.get("kernels") or []
    families = sorted({n.split("_")[0] for n in names})
    return ", ".join(f"{f} x{sum(n.startswith(f) for n in names)}" for f in families) or "-"


def _ratio(row: dict) -> str:
    """The compiler's FLOPs over the analytic count; "*": the compiler split ops into loops
    of its own, which its count sees once (then the ratio is low by that much)."""
    ratio = (row.get("flops") or {}).get("compiler_vs_analytic")
    return "-" if ratio is None else f"{ratio}" + ("*" if row.get("compiler_loops") else "")


def table(rows: list[dict]) -> str:
    head = (f"{'program':<17} {'HBM/chip GiB':>13} {'of':>6} {'headroom':>9} {'compile s':>9} "
            f"{'FLOPs cmp/ana':>13} {'est step s':>10} {'MFU bound':>9}  kernels")
    lines = [head]
    for r in rows:
        hbm = r.get("hbm") or {"total": r.get("needed"), "capacity": r.get("capacity")}
        total = _gib(hbm.get("total")) + ("" if r.get("fits") else " NO FIT")
        lines.append(
            f"{r['program']:<17} {total:>13} {_gib(hbm.get('capacity')):>6} "
            f"{_gib(hbm.get('headroom')):>9} {r.get('compile_s', '-'):>9} "
            f"{_ratio(r):>13} "
            f"{('%.4g' % r['est_step_s']) if r.get('est_step_s') else '-':>10} "
            f"{r.get('mfu_bound') or '-':>9}  {_kernels(r)}")
    if any(r.get("compiler_loops") and r.get("flops") for r in rows):
        lines.append("* the compiler split matmuls into loops of its own (to fit HBM); XLA's "
                     "count sees each loop body once, so its FLOPs are low by that much")
    return "\n".join(lines)


def search_table(candidates: list[dict], run: fit.RunConfigs) -> str:
    """The fit search's answer: per remat policy the smallest grad_accum that fits."""
    lines = [f"fit search: train_step at global batch {run.data.global_batch_size} "
             f"(smallest train.grad_accum that fits, per ModelConfig.remat)"]
    for c in candidates:
        if not c["fits"]:
            lines.append(f"  remat={c['remat']:<5} fits at no grad_accum")
            continue
        lines.append(f"  remat={c['remat']:<5} grad_accum={c['grad_accum']:<4} "
                     f"HBM/chip {_gib(c['hbm_total'])} GiB  est step "
                     + (f"{c['est_step_s']:.3f} s" if c["est_step_s"] is not None else "-")
                     + ("  <- fastest" if c["fastest"] else ""))
    return "\n".join(lines)


_SMALLER_BATCH = {
    "score_step": "lower the score job's batch (DataConfig.global_batch_size of the score run)",
    "eval_step": "lower train.eval_data's global_batch_size",
    "generate_prefill": "lower FewShotEvalConfig.batch_size (or HarnessEval.batch_size)",
    "generate_decode": "lower FewShotEvalConfig.batch_size (or HarnessEval.batch_size)"}


def advice(row: dict, run: fit.RunConfigs, runtime: Runtime) -> str:
    """What to change for a program that does not fit, as gin bindings."""
    over = ""
    if row.get("needed") and row.get("capacity"):
        over = (f" ({_gib(row['needed'])} GiB needed of {_gib(row['capacity'])} GiB, "
                f"{_gib(row['needed'] - row['capacity'])} GiB over)")
    fixes = []
    state = row.get("argument_bytes")
    if state and row.get("capacity") and state > 0.8 * row["capacity"]:
        fixes.append(f"its params and optimizer state alone take {_gib(state)} GiB a chip: "
                     "compile for a larger topology (more chips to shard over)")
    if row["program"] == "train_step":
        micro = run.data.global_batch_size // run.grad_accum
        fixes.append(f"raise train.grad_accum (now {run.grad_accum}: "
                     f"{micro // runtime.data_parallel_size} sequences a chip per micro-batch)")
        if run.model.remat != "full":
            fixes.append(f"set ModelConfig.remat='full' (now {run.model.remat!r})")
        if run.selection.mode == "slm" and run.reference.resolved_dtype != "bfloat16":
            fixes.append("set ReferenceConfig.dtype='bfloat16'")
    else:
        fixes.append(_SMALLER_BATCH[row["program"]])
    fixes.append(f"change MeshConfig.fsdp (or MeshConfig.tensor; now {dict(runtime.mesh.shape)})")
    return (f"{row['program']} does not fit in the HBM of a {row['device_kind']} chip{over}: "
            + "; or ".join(fixes) + "; --gin.compile.search=True finds the cheapest that fits")


@gin.configurable("compile")
def compile_run(topology: str = gin.REQUIRED, search: bool = False,
                count_flops: bool = True, out_dir: str | None = None) -> list[dict]:
    """Compiles the run's programs for `topology` (e.g. "v5p:4x4x4"; the slices are
    MeshConfig.num_slices) and reports them; returns the rows.

    count_flops: also compile the unrolled twins that count scanned layers (FLOPs, step
      time, MFU bound); False reports memory, collectives and kernels only.
    out_dir: where compile.jsonl and log.txt (libtpu's start-up lines among them) go.
    """
    run = run_configs_of_train_job()
    devices = topology_lib.tpu_devices(topology, run.mesh.num_slices)
    runtime = Runtime.from_config(run.mesh, devices)
    checks.check_batch(run.data, runtime, run.grad_accum, grad_accum_binding="train.grad_accum")
    log_path = os.path.join(out_dir, "log.txt") if out_dir else os.devnull
    with console.log_file(log_path), runtime.activate():
        rows = [fit.measure_program(spec, run, runtime, count_flops)
                for spec in fit.program_specs(run, runtime)]
        for row in rows:
            row.update(topology=topology, num_slices=run.mesh.num_slices,
                       mesh=dict(runtime.mesh.shape),
                       attention=attention.resolve_attention(run.model, run.data.seq_len))
        if search:
            rows.append({"program": "search", "topology": topology,
                         "candidates": fit.search_fit(run, runtime)})
    lines = [json.dumps(row) for row in rows]
    print("\n".join(lines), flush=True)
    print(table([r for r in rows if r["program"] != "search"]), flush=True)
    if search:
        print(search_table(rows[-1]["candidates"], run), flush=True)
    if out_dir:
        with open(os.path.join(out_dir, "compile.jsonl"), "w") as f:
            f.write("\n".join(lines) + "\n")
    refused = [r for r in rows if r.get("fits") is False]
    if refused:
        raise ValueError(" | ".join(advice(r, run, runtime) for r in refused))
    return rows
