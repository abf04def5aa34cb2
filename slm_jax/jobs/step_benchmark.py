"""Step benchmark: CLM, SLM-online and SLM-offline in one process, as JSON lines.

    python -m slm_jax.bench --gin_file=gin/bench/cpu_small.gin
    (or any gin file with --gin.run.job=bench)

Each mode runs its warm-up steps, then the timed steps of all modes run in turn
(one step of each mode per round) on synthetic packed batches (the data pipeline
is not timed). One JSON object per mode: step_s (median),
tokens_per_s, model FLOPs per token, achieved FLOP/s, mfu, peak_mem_bytes,
select_share (time of the token selection alone / step time) and the ratio
to the CLM step. Then one line per selection method (`mode` "select") timing
the selection alone over `select_tokens` positions (default 1M, Rho-1's
batch), with whether its mask equals the default method's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import statistics
import time

import gin
import jax
import jax.numpy as jnp
import numpy as np

from slm_jax import model as model_lib
from slm_jax.hardware import device_peak, peak_memory_bytes
from slm_jax.parallel import partition, sharding
from slm_jax.parallel.runtime import Runtime
from slm_jax.slm.optim import OptimizerConfig, make_optimizer
from slm_jax.slm.reference import ReferenceConfig
from slm_jax.slm.selection import METHODS, SelectionConfig, select_tokens
from slm_jax.trainer import programs
from slm_jax.trainer.flops import slm_step_flops_per_token
from slm_jax.trainer.reference_model import load_reference

def synthetic_batch(batch: int, seq_len: int, vocab: int, seed: int = 0) -> dict:
    """Packed rows of 4 documents each, all positions weighted."""
    rng = np.random.default_rng(seed)
    doc = seq_len // 4
    return {
        "inputs": rng.integers(3, vocab, (batch, seq_len)).astype(np.int32),
        "targets": rng.integers(3, vocab, (batch, seq_len)).astype(np.int32),
        "loss_weights": np.ones((batch, seq_len), np.float32),
        "segment_ids": np.repeat(np.arange(1, 5, dtype=np.int32), doc)[None].repeat(batch, 0),
        "positions": np.tile(np.arange(doc, dtype=np.int32), 4)[None].repeat(batch, 0),
        "ref_loss": rng.random((batch, seq_len)).astype(np.float32) * 5,
    }


def time_fn(fn, n_warmup: int, n_steps: int) -> list[float]:
    for _ in range(n_warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(n_steps):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return times


MODES = {"clm": "clm", "slm_online": "slm", "slm_offline": "slm_offline"}


def _selection_of(mode: str, ratio: float) -> SelectionConfig:
    """"slm_offline" etc., "slm_offline:dense" (a mode with a token weighting) or
    "slm_online@ema" (the online mode with an in-state reference source)."""
    name, _, weighting = mode.partition("@")[0].partition(":")
    return SelectionConfig(mode=MODES[name], ratio=1.0 if name == "clm" else ratio,
                           weighting=weighting or "hard")


def _self_reference_of(mode: str, reference: ReferenceConfig):
    source = mode.partition("@")[2]
    return dataclasses.replace(reference, source=source, checkpoint=None, model=None
                               ).self_reference() if source else None


def _build_steps(model, ref, reference, modes, ratio, tx, schedule, runtime, host_batch,
                 grad_accum):
    """{mode: (jitted step, reference params or None, device batch, SelectionConfig,
    SelfReference or None)}: each mode's train program, as the train job builds it."""
    steps = {}
    for mode in modes:
        selection, self_ref = _selection_of(mode, ratio), _self_reference_of(mode, reference)
        program = programs.train_program(runtime, model, selection, tx, schedule,
                                         batch_size=host_batch["inputs"].shape[0],
                                         seq_len=host_batch["inputs"].shape[1],
                                         grad_accum=grad_accum, reference=ref.forward,
                                         self_reference=self_ref)
        batch = jax.device_put({k: host_batch[k] for k in program.args[2]},
                               program.in_shardings(2))
        ref_params = ref.params if selection.mode == "slm" and self_ref is None else None
        steps[mode] = (program.fn, ref_params, batch, selection, self_ref)
    return steps


def _reference_bytes(state, ref_params) -> int:
    """Bytes of the reference's params the step holds (an in-state one or the argument)."""
    tree = state.ref_params if state.ref_params is not None else ref_params
    return sum(x.nbytes for x in jax.tree.leaves(tree))


def _interleaved_step_times(steps, state, modes, warmup_steps, timed_steps, profile_dir=None,
                            param_shardings=None):
    """({mode: step times}, {mode: peak memory after its warm-up}, {mode: reference bytes}).

    One train state goes through every mode's step in turn, so interleaving costs no
    memory (a mode with an in-state reference gets one from the params before its step,
    untimed, and the next mode drops it); the timed steps round-robin over the modes, so
    drift of a shared machine's speed hits every mode alike instead of whichever ran last.
    """
    holder = [state, None]   # the state and the kind of its in-state reference

    def adapt(mode):
        self_ref = steps[mode][4]
        if holder[1] != (self_ref and self_ref.kind):
            ref = None if self_ref is None else jax.jit(
                self_ref.initial, out_shardings=param_shardings)(holder[0].params)
            holder[:] = [holder[0].replace(ref_params=ref), self_ref and self_ref.kind]

    def one_step(mode):
        step, ref, batch, *_ = steps[mode]
        holder[0], metrics = step(holder[0], ref, batch)
        return metrics
    # Peak memory as of each mode's warm-up (process-wide peaks only grow; CLM first).
    peak_mem, ref_bytes = {}, {}
    for mode in modes:
        adapt(mode)
        time_fn(lambda: one_step(mode), warmup_steps, 0)
        peak_mem[mode] = peak_memory_bytes()
        ref_bytes[mode] = _reference_bytes(holder[0], steps[mode][1])
    step_times = {mode: [] for mode in modes}
    # The timed steps only: a trace of warm programs (Perfetto JSON beside TensorBoard's).
    trace = (jax.profiler.trace(profile_dir, create_perfetto_trace=True) if profile_dir
             else contextlib.nullcontext())
    with trace:
        for _ in range(timed_steps):
            for mode in modes:
                adapt(mode)
                with jax.profiler.TraceAnnotation(f"train_step_{mode}"):
                    step_times[mode] += time_fn(lambda: one_step(mode), 0, 1)
    return step_times, peak_mem, ref_bytes


def _selection_seconds(runtime, batch, selection, ratio, warmup_steps, timed_steps) -> float:
    select = jax.jit(lambda e, w: select_tokens(e, w, ratio, "batch", selection.method),
                     in_shardings=(runtime.batch_sharding(),) * 2)
    excess, weights = batch.get("ref_loss", batch["loss_weights"]), batch["loss_weights"]
    return statistics.median(time_fn(lambda: select(excess, weights), warmup_steps, timed_steps))


@gin.configurable
def bench(model: model_lib.ModelConfig | None = None, *,
          batch_size: int = 8, seq_len: int = 512,
          modes=("clm", "slm_online", "slm_offline"), warmup_steps: int = 2,
          timed_steps: int = 10, grad_accum: int = 1,
          selection: SelectionConfig | None = None,
          reference: ReferenceConfig | None = None, mesh: sharding.MeshConfig | None = None,
          select_tokens_count: int = 1 << 20, select_methods=METHODS,
          weightings=(), reference_sources=(),
          profile_dir: str | None = None) -> list[dict]:
    """Times CLM, SLM-online (reference forward in `ReferenceConfig.dtype`) and SLM-offline
    steps and prints one JSON line per mode, then one per selection method. With
    `profile_dir`, the timed steps are traced there (benchmarks/profile_summary.py).

    The SLM modes keep `SelectionConfig.ratio` of the tokens; the reference is
    `ReferenceConfig.model` (or the student's config) in `ReferenceConfig.dtype`, with
    random params. `weightings` (e.g. ("dense", "sparse", "prob")) adds an SLM-offline
    step per token weighting (slm_jax/slm/weighting.py), timed beside the others, with its
    ratio to the hard top-k step ("ratio_to_hard"). `reference_sources` (e.g. ("snapshot",
    "ema")) adds an SLM-online step whose reference is the student's own snapshot or EMA
    (ReferenceConfig.source), with its ratio to the online step with a separate reference
    ("ratio_to_online"). Every row has "reference_bytes": the reference params it holds."""
    model = model or model_lib.ModelConfig()
    modes = (tuple(modes) + tuple(f"slm_offline:{w}" for w in weightings)
             + tuple(f"slm_online@{s}" for s in reference_sources))
    reference = reference or ReferenceConfig()
    ratio = (selection or SelectionConfig()).ratio
    runtime = Runtime.from_config(mesh)
    tx, schedule = make_optimizer(OptimizerConfig(), 1000)
    state_sh = runtime.state_shardings(model, tx)
    peak, peak_source = device_peak()
    tokens = batch_size * seq_len
    results = []
    with runtime.activate():
        # A random reference: the bench times, it does not learn.
        ref = load_reference(dataclasses.replace(reference, source="checkpoint"), model,
                             runtime, init_seed=1)
        steps = _build_steps(model, ref, reference, modes, ratio, tx, schedule, runtime,
                             synthetic_batch(batch_size, seq_len, model.vocab_size), grad_accum)
        step_times, peak_mem, ref_bytes = _interleaved_step_times(
            steps, partition.init_state(model, tx, jax.random.key(0), state_sh), modes,
            warmup_steps, timed_steps, profile_dir, state_sh.params)
        for mode in modes:
            step_s = statistics.median(step_times[mode])
            _, _, batch, selection, _ = steps[mode]
            flops = slm_step_flops_per_token(
                model, ref.forward if selection.mode == "slm" else None, seq_len)
            select_s = 0.0 if not selection.selects else _selection_seconds(
                runtime, batch, selection, ratio, warmup_steps, timed_steps)
            results.append({
                "mode": mode, "step_s": step_s, "tokens_per_s": tokens / step_s,
                "model_flops_per_token": flops, "achieved_flops": flops * tokens / step_s,
                "mfu": flops * tokens / step_s / peak, "peak_flops": peak,
                "peak_source": peak_source, "peak_mem_bytes": peak_mem[mode],
                "reference_bytes": ref_bytes[mode],
                "select_share": select_s / step_s, "batch_tokens": tokens,
                "step_times_s": [round(t, 4) for t in step_times[mode]],
                "reference_dtype": ref.forward.dtype,
                "device": jax.devices()[0].device_kind, "num_devices": jax.device_count(),
            })
    clm = next((r for r in results if r["mode"] == "clm"), None)
    hard = next((r for r in results if r["mode"] == "slm_offline"), None)
    online = next((r for r in results if r["mode"] == "slm_online"), None)
    for r in results:
        if clm is not None:
            r["ratio_to_clm"] = r["step_s"] / clm["step_s"]
        if hard is not None and ":" in r["mode"]:
            r["ratio_to_hard"] = r["step_s"] / hard["step_s"]
        if online is not None and "@" in r["mode"]:
            r["ratio_to_online"] = r["step_s"] / online["step_s"]
        print(json.dumps(r), flush=True)
    if select_tokens_count:
        with runtime.activate():
            for r in selection_benchmark(runtime.mesh, select_tokens_count, ratio,
                                         select_methods, warmup_steps, timed_steps):
                print(json.dumps(r), flush=True)
                results.append(r)
    return results


def selection_benchmark(dev_mesh, num_tokens: int, ratio: float, methods,
                        warmup_steps: int, timed_steps: int) -> list[dict]:
    """Selection alone over a [num_tokens / 2048, 2048] batch sharded like training."""
    seq_len = min(2048, num_tokens)
    dp = sharding.data_parallel_size(dev_mesh)
    rows = -(-max(1, num_tokens // seq_len) // dp) * dp  # whole rows per data shard
    rng = np.random.default_rng(0)
    batch_sh = sharding.batch_sharding(dev_mesh)
    # Losses rounded to bf16, as stored by `score`: many exact ties.
    excess = jax.device_put(rng.normal(size=(rows, seq_len)).astype(jnp.bfloat16)
                            .astype(np.float32), batch_sh)
    weights = jax.device_put((rng.random((rows, seq_len)) > 0.05).astype(np.float32), batch_sh)
    default_mask, results = None, []
    for method in methods:
        select = jax.jit(lambda e, w, method=method: select_tokens(e, w, ratio, "batch", method),
                         in_shardings=(batch_sh,) * 2)
        mask = np.asarray(select(excess, weights))
        default_mask = mask if default_mask is None else default_mask
        select_s = statistics.median(time_fn(lambda: select(excess, weights),
                                             warmup_steps, timed_steps))
        results.append({"mode": "select", "method": method, "select_tokens": rows * seq_len,
                        "select_s": select_s, "tokens_per_s": rows * seq_len / select_s,
                        "selected": int(mask.sum()),
                        f"same_mask_as_{methods[0]}": bool((mask == default_mask).all()),
                        "num_devices": jax.device_count()})
    return results
