"""The programs of a run, named in one place: the jitted function each job runs and the
abstract arguments it takes (shapes, dtypes and input shardings as jax.ShapeDtypeStructs).

The train job runs `train_program(...).fn`; anything that must know a run's programs
without data, checkpoints or a step (lowering, compiling for another topology, memory
estimates) asks `run_programs(...)` and calls `.lower()`:

    for program in run_programs(model, data, selection, optimizer, reference, runtime):
        program.lower().compile().memory_analysis()
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax

from slm_jax import model as model_lib
from slm_jax.data import BATCH_KEYS, iterator
from slm_jax.data.scored import SCORED_KEYS
from slm_jax.model import generate
from slm_jax.parallel import partition
from slm_jax.slm.optim import make_optimizer
from slm_jax.slm.train_step import make_eval_step, make_score_step, make_train_step


@dataclasses.dataclass(frozen=True)
class Program:
    """One jitted program of a run and the abstract arguments it is called with."""

    name: str
    fn: Callable          # a jax.jit-wrapped function
    args: tuple           # pytrees of jax.ShapeDtypeStruct carrying their shardings
    static: dict = dataclasses.field(default_factory=dict)   # its static keyword arguments

    def lower(self):
        """jax.jit's Lowered; call it inside `runtime.activate()` (the activations'
        sharding rules are part of the program)."""
        return self.fn.lower(*self.args, **self.static)

    def in_shardings(self, index: int):
        """The shardings of argument `index` (e.g. the train state's)."""
        return jax.tree.map(lambda a: a.sharding, self.args[index])


def _with_shardings(abstract_tree, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract_tree, shardings)


@dataclasses.dataclass(frozen=True)
class BatchShape:
    """The global batch of a run (a DataConfig has the same two fields)."""

    global_batch_size: int
    seq_len: int


def abstract_batch(runtime, batch_size: int, seq_len: int, keys=BATCH_KEYS) -> dict:
    """A global batch as the data pipeline (or the scored stream) hands it to the step."""
    spec = iterator.batch_spec(BatchShape(batch_size, seq_len), runtime.batch_sharding())
    if "ref_loss" in keys:
        spec["ref_loss"] = jax.ShapeDtypeStruct(spec["loss_weights"].shape, "float32",
                                                sharding=runtime.batch_sharding())
    return {k: spec[k] for k in keys}


def abstract_params(runtime, model: model_lib.ModelConfig, dtype=None):
    """The params of `model` (cast to `dtype`, as a frozen reference is) in their shards."""
    abstract = model_lib.abstract_params(model)
    if dtype is not None:
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, dtype), abstract)
    return _with_shardings(abstract, runtime.param_shardings(model))


def train_program(runtime, model, selection, tx, schedule, *, batch_size: int, seq_len: int,
                  grad_accum: int = 1, reference: model_lib.ModelConfig | None = None,
                  scored: bool | None = None, self_reference=None) -> Program:
    """`step(state, ref_params, batch) -> (state, metrics)`, the state donated.

    `reference`: the config the reference's forward runs with (LoadedReference.forward);
    its params are an argument only in mode "slm" with a checkpoint reference
    (`self_reference`, ReferenceConfig.self_reference(), keeps them in the state).
    `scored`: the batches come from a `score` job's output and carry the stored reference
    losses ("ref_loss"), as they must in mode "slm_offline" (the default) and may in any
    mode (runs compared on the same tokens)."""
    state_sh = runtime.state_shardings(model, tx, self_reference)
    ref_argument = selection.mode == "slm" and self_reference is None
    ref_sh = runtime.param_shardings(reference or model) if ref_argument else None
    scored = selection.mode == "slm_offline" if scored is None else scored
    keys = SCORED_KEYS if scored else BATCH_KEYS
    fn = partition.jit_train_step(
        make_train_step(model, selection, tx, schedule, grad_accum=grad_accum,
                        reference_model_config=reference, self_reference=self_reference),
        state_sh, ref_sh, runtime.mesh, batch_keys=keys)
    state = _with_shardings(partition.abstract_train_state(model, tx, self_reference), state_sh)
    ref = abstract_params(runtime, reference or model, (reference or model).dtype) \
        if ref_argument else None
    return Program("train_step", fn, (state, ref, abstract_batch(runtime, batch_size, seq_len,
                                                                 keys)))


def eval_program(runtime, model, *, batch_size: int, seq_len: int) -> Program:
    """`eval(params, batch) -> (weighted loss sum, weight sum)`: the held-out loss."""
    fn = runtime.jit_eval(make_eval_step(model), model)
    return Program("eval_step", fn, (abstract_params(runtime, model),
                                     abstract_batch(runtime, batch_size, seq_len)))


def score_program(runtime, reference: model_lib.ModelConfig, *, batch_size: int,
                  seq_len: int) -> Program:
    """`score(ref_params, batch) -> loss [B, T]`: the reference's per-token losses (the
    `score` job, analyze's page), batch-sharded out."""
    fn = runtime.jit_eval(make_score_step(reference), reference,
                          out_sharding=runtime.batch_sharding())
    return Program("score_step", fn, (abstract_params(runtime, reference, reference.dtype),
                                      abstract_batch(runtime, batch_size, seq_len)))


@dataclasses.dataclass(frozen=True)
class GenerationShape:
    """The batches a generating eval (few-shot accuracy, lm-eval's generate_until) runs."""

    batch_size: int = 32
    prompt_len: int = 512       # the prompt bucket the prompts are padded to
    max_new_tokens: int = 256


def generation_programs(runtime, model, shape: GenerationShape,
                        eos_id: int | None = None) -> list[Program]:
    """Prefill (prompts -> KV cache and first logits) and the decode loop of
    slm_jax/model/generate.py for one batch shape."""
    params = abstract_params(runtime, model)
    prompt = jax.ShapeDtypeStruct((shape.batch_size, shape.prompt_len), "int32",
                                  sharding=runtime.batch_sharding())
    rng = jax.eval_shape(lambda: jax.random.key(0))
    prefill_static = dict(config=model, cache_len=shape.prompt_len + shape.max_new_tokens,
                          max_new_tokens=shape.max_new_tokens)
    with runtime.activate():
        state = jax.eval_shape(functools.partial(generate.prefill, **prefill_static), params,
                               prompt, prompt, rng)
    scalar = lambda dtype: jax.ShapeDtypeStruct((), dtype)  # noqa: E731
    return [Program("generate_prefill", generate.prefill, (params, prompt, prompt, rng),
                    prefill_static),
            Program("generate_decode", generate.decode_steps,
                    (params, state, scalar("int32"), scalar("float32"), scalar("float32")),
                    dict(config=model, eos_id=eos_id))]


def run_programs(model, data, selection, optimizer, reference_forward, runtime, *,
                 num_steps: int = 1000, grad_accum: int = 1,
                 generation: GenerationShape | None = None,
                 self_reference=None) -> list[Program]:
    """Every program a run of these configs compiles: its train step, the held-out eval
    step, where a reference runs (mode "slm", or the `score` job that feeds
    "slm_offline") the reference's score step, and with `generation` the prefill and
    decode of a generating eval. `data`: the run's DataConfig or a BatchShape.
    `reference_forward`: the reference's forward ModelConfig
    (`ReferenceConfig.forward_config(model)`), or None; `self_reference`: an in-state
    reference (ReferenceConfig.self_reference()), which no score job runs."""
    tx, schedule = make_optimizer(optimizer, num_steps)
    shape = dict(batch_size=data.global_batch_size, seq_len=data.seq_len)
    programs = [train_program(runtime, model, selection, tx, schedule, grad_accum=grad_accum,
                              reference=reference_forward, self_reference=self_reference,
                              **shape),
                eval_program(runtime, model, **shape)]
    if selection.selects and reference_forward is not None and self_reference is None:
        programs.append(score_program(runtime, reference_forward, **shape))
    if generation is not None:
        programs += generation_programs(runtime, model, generation)
    return programs
