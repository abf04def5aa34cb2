"""The `train` job: CLM or SLM training of one model, sharded, checkpointed, resumable.

Step 1 of SLM (the reference model) is this job in "clm" mode on the high-quality data;
step 3 (the student) is this job in "slm" mode with `ReferenceConfig.checkpoint` pointing
at step 1's checkpoints (or "slm_offline" with `train.scored_data` from step 2).
The loop and its hooks (logging, evals, checkpoints, profiler, finite guard, preemption)
are slm_jax/trainer/; this module wires them to the gin configs.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import gin
import jax

from slm_jax import console
from slm_jax import model as model_lib
from slm_jax.data import iterator, pipeline, score_sketch, scored
from slm_jax.parallel import checkpoint as ckpt_lib
from slm_jax.parallel import ownership
from slm_jax.parallel import sharding
from slm_jax.parallel.runtime import Runtime
from slm_jax.slm.optim import OptimizerConfig, make_optimizer
from slm_jax.slm.reference import ReferenceConfig
from slm_jax.slm.selection import SelectionConfig
from slm_jax.trainer import checks, flops, programs
from slm_jax.trainer import hooks as train_hooks
from slm_jax.trainer.metrics_log import MetricsLogger
from slm_jax.trainer.reference_model import load_reference
from slm_jax.trainer.run_record import write_run_record
from slm_jax.trainer.trainer import Trainer

NonFiniteError = train_hooks.NonFiniteError


def _check_counts(**counts):
    """Step counts and intervals: ints, at least their minimum (refused before any work)."""
    minimum = {"num_steps": 1, "log_every": 1, "eval_every": 0, "eval_batches": 1, "grad_accum": 1}
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum[name]:
            raise ValueError(f"train.{name}={value!r} must be an int >= {minimum[name]}; set "
                             f"--gin.train.{name}.")


def _check_config(model, data, selection, reference, scored_data, grad_accum, on_nonfinite,
                  runtime):
    selection.check_mode()
    if reference.source != "checkpoint" and selection.mode != "slm":
        raise ValueError(f"ReferenceConfig.source={reference.source!r} is the reference of the "
                         "online step: set SelectionConfig.mode='slm' (or unset "
                         "ReferenceConfig.source).")
    if selection.mode == "slm":
        if reference.source == "checkpoint" and not reference.checkpoint:
            raise ValueError("SelectionConfig.mode='slm' needs a reference model: set "
                             "--gin.ReferenceConfig.checkpoint to the checkpoints/ directory of "
                             "a reference `train` run.")
        reference.check_compatible(model)
    if selection.mode == "slm_offline" and not scored_data:
        raise ValueError("SelectionConfig.mode='slm_offline' needs stored reference losses: set "
                         "--gin.train.scored_data to the out_dir of a `score` job.")
    if on_nonfinite not in train_hooks.ON_NONFINITE:
        raise ValueError(f"train.on_nonfinite={on_nonfinite!r} must be 'stop' or 'skip'; set "
                         "--gin.train.on_nonfinite.")
    checks.check_context(data, model)
    checks.check_batch(data, runtime, grad_accum, grad_accum_binding="train.grad_accum")
    checks.check_tokenizers(data, model, reference if selection.mode == "slm" else None)


def _with_global_threshold(selection: SelectionConfig, scored_data) -> SelectionConfig:
    """Scope "global": the threshold from the scored corpus's sketch (unless set by hand)."""
    if selection.scope != "global" or selection.threshold is not None:
        return selection
    threshold, tokens = score_sketch.threshold(scored_data, selection.score, selection.ratio,
                                               binding="train.scored_data")
    logging.info("scope 'global': keeping %s scores >= %.4f, the top %.1f%% of the %d "
                 "scored tokens", selection.score, threshold, 100 * selection.ratio, tokens)
    return dataclasses.replace(selection, threshold=threshold)


def _prepare_run_dir(run_dir: str) -> None:
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as e:
        raise ValueError(f"train.run_dir={run_dir!r} is not writable ({e.strerror}); "
                         "choose another --gin.train.run_dir.") from e
    if not os.access(run_dir, os.W_OK):
        raise ValueError(f"train.run_dir={run_dir!r} is not writable; choose another "
                         "--gin.train.run_dir.")


def _batches(data, scored_data, runtime, start, data_state, where):
    if scored_data:  # seekable by step: nothing to restore
        return scored.scored_batches(scored_data, data, runtime.mesh, runtime.batch_sharding(),
                                     start_step=start, binding="train.scored_data")
    return iterator.make_train_iterator(data, runtime.mesh, runtime.batch_sharding(),
                                        start_step=start, saved_state=data_state, where=where)


def _configs_as_dicts(**configs) -> dict:
    return {name: dataclasses.asdict(config) for name, config in configs.items()}


def _eval_hooks(eval_data, eval_batches, few_shot_eval, evals) -> list:
    """The shorthand bindings (eval_data, few_shot_eval) and the general list, as one list."""
    hooks = [train_hooks.HeldOutLossEval(eval_data, eval_batches)] if eval_data else []
    return hooks + ([few_shot_eval] if few_shot_eval else []) + list(evals)



def _check_inputs(run_dir, model, data, selection, reference, scored_data, eval_data,
                  grad_accum, on_nonfinite, runtime, files: bool = True, **counts) -> None:
    """Everything refused before any work; bad data paths or tokenizers fail here, before
    anything in run_dir is touched."""
    _check_counts(grad_accum=grad_accum, **counts)
    _check_config(model, data, selection, reference, scored_data, grad_accum, on_nonfinite,
                  runtime)
    for config in ([data] if files else []) + ([eval_data] if eval_data else []):
        pipeline.register_task(config)
    _prepare_run_dir(run_dir)


def _add_hooks(trainer, logger, evaluator, batches, checkpointer, *, log_every, on_nonfinite,
               profile, run_dir, seekable: bool) -> tuple[dict, list]:
    """Registers the run's hooks, in the order they run after a step; returns the summary
    they fill and the closers to call when the run ends."""
    summary = {}
    guard = train_hooks.FiniteGuard(on_nonfinite)
    preemption = train_hooks.PreemptionWatcher()  # SIGTERM/SIGINT: checkpoint, exit 0
    profiler = train_hooks.Profiler(os.path.join(run_dir, "profile"), profile)

    def log(info):
        summary.update(logger.log(info.step, batches.add_to(info.metrics)))

    def evaluate(info):  # mid-run; the final eval runs once the last step is done
        if evaluator.due(info.step, trainer.num_steps):
            logger.log_eval(info.step, evaluator, info.state.params)

    def note_stop(info):
        if info.stopping:
            logger.preempted(info.step)
            summary["preempted"] = True

    trainer.add_before_step(profiler.before_step)
    trainer.add_hook(lambda info: profiler.after_step(info.step, info.metrics))
    trainer.add_hook(guard)
    trainer.add_hook(lambda info: logger.step_done(info.step))
    trainer.add_hook(log, every=log_every, at_last=True)
    trainer.add_hook(evaluate)
    trainer.add_hook(train_hooks.CheckpointHook(
        checkpointer, preemption, guard, (lambda: None) if seekable else batches.state))
    trainer.add_hook(note_stop)
    if evaluator:
        trainer.add_final_hook(lambda state: summary.update(
            logger.log_eval(trainer.num_steps, evaluator, state.params)))
    # A Ctrl-C in the closers must not kill the last save half-written: wait first.
    return summary, [profiler.close, checkpointer.wait, preemption.close, logger.close]


def _make_trainer(runtime, model, selection, ref, tx, schedule, data, grad_accum, num_steps,
                  checkpointer, scored_data) -> Trainer:
    """The trainer around the run's train program (the reference's forward in the step in
    mode "slm")."""
    step = programs.train_program(runtime, model, selection, tx, schedule,
                                  batch_size=data.global_batch_size, seq_len=data.seq_len,
                                  grad_accum=grad_accum, reference=ref and ref.forward,
                                  scored=bool(scored_data),
                                  self_reference=ref and ref.self_reference)
    return Trainer(step.fn, num_steps, checkpointer=checkpointer, runtime=runtime, model=model,
                   tx=tx, state_shardings=step.in_shardings(0),
                   self_reference=ref and ref.self_reference)


def _start_records(run_dir, runtime, model, ref, data, start, num_steps, progress,
                   record: dict) -> MetricsLogger:
    """run_record.json and config.gin, then the metrics logger (metrics.jsonl, TensorBoard,
    console) counting the student's step plus the reference's forward as model FLOPs."""
    write_run_record(run_dir, runtime.mesh, record)
    return MetricsLogger(run_dir, total_steps=num_steps, start_step=start,
                         tokens_per_step=data.global_batch_size * data.seq_len,
                         name=os.path.basename(os.path.normpath(run_dir)), progress=progress,
                         flops_per_token=flops.slm_step_flops_per_token(
                             model, ref and ref.forward, data.seq_len))


def _run(trainer, state, ref, batches, closers, first_eval=None):
    """The loop, after `first_eval(params)` when given; the closers run whatever happens,
    and a non-finite stop names the binding that skips such steps instead."""
    try:
        if first_eval:
            first_eval(state.params)
        state, _ = trainer.run(state, ref and ref.params, batches)
    except NonFiniteError as e:
        raise NonFiniteError(f"{e} (--gin.train.on_nonfinite=skip)") from e
    finally:
        for close in closers:
            close()
    return state


@gin.configurable(denylist=["progress", "batch_source"])
def train(run_dir: str = gin.REQUIRED, *,
          num_steps: int = 1000,
          model: model_lib.ModelConfig | None = None,
          data: pipeline.DataConfig | None = None,
          selection: SelectionConfig | None = None,
          optimizer: OptimizerConfig | None = None,
          mesh: sharding.MeshConfig | None = None,
          checkpoint: ckpt_lib.CheckpointConfig | None = None,
          reference: ReferenceConfig | None = None,
          scored_data: str | None = None,
          init_checkpoint: str | None = None,
          grad_accum: int = 1,
          log_every: int = 10,
          eval_data: pipeline.DataConfig | None = None,
          eval_every: int = 0,
          eval_first: bool = False,
          eval_batches: int = 8,
          few_shot_eval=None,
          evals=(),
          seed: int = 0,
          on_nonfinite: str = "stop",
          profile: tuple[int, int] | None = None,
          progress: bool = True,
          batch_source=None) -> dict:
    """Trains for `num_steps` (resuming from `run_dir/checkpoints` if present).

    Args:
      run_dir: where checkpoints, metrics.jsonl and TensorBoard logs go.
      reference: the frozen reference model of mode "slm" (`ReferenceConfig.*`).
      scored_data: out_dir of a `score` job; the batches (and, in mode
        "slm_offline", their reference losses) come from there instead of
        `data`'s files, so runs of any mode can train on the same tokens.
      init_checkpoint: start the params from this checkpoint (e.g. the base
        model) instead of a random init with `seed`.
      grad_accum: micro-batches per step; selection ranks within each one.
      eval_data, eval_batches: held-out loss over `eval_batches` batches of `eval_data`.
      few_shot_eval: a `FewShotEvalConfig` (slm_jax/evals/): few-shot accuracy.
      evals: more eval hooks (slm_jax/trainer/hooks.py, slm_jax/evals/); all of them run
        every `eval_every` steps and at the end, logged with an `eval_` prefix.
      eval_first: a fresh run also evaluates its initial params (logged as step 0): where
        a curve of a run from a pretrained checkpoint starts.
      on_nonfinite: a NaN/Inf loss or gradient is never applied; "stop" ends the
        run with an error naming the step (the last checkpoint stays the last
        good one), "skip" goes on with the next batch.
      profile: (first step, number of steps) to trace with jax.profiler into
        `run_dir/profile/` (TensorBoard's profile plugin, Perfetto).
      batch_source: (batch sharding, start step) -> global batches, seekable by step,
        instead of `data`'s files (the `sft` job's epochs); `data` still gives the batch
        shape and the tokenizer.

    Returns:
      The last logged train metrics and the final eval metrics ("eval_loss", ...).
    """
    model, data = model or model_lib.ModelConfig(), data or pipeline.DataConfig()
    selection, optimizer = selection or SelectionConfig(), optimizer or OptimizerConfig()
    reference, mesh = reference or ReferenceConfig(), mesh or sharding.MeshConfig()
    runtime = Runtime.from_config(mesh)
    _check_inputs(run_dir, model, data, selection, reference, scored_data, eval_data,
                  grad_accum, on_nonfinite, runtime, files=not (scored_data or batch_source),
                  num_steps=num_steps, log_every=log_every, eval_every=eval_every,
                  eval_batches=eval_batches)
    selection = _with_global_threshold(selection, scored_data)
    tx, schedule = make_optimizer(optimizer, num_steps)
    with ownership.own(run_dir, binding="train.run_dir"), \
            console.log_file(os.path.join(run_dir, "log.txt"), start=False) as log, \
            runtime.activate(), \
            ckpt_lib.Checkpointer(os.path.join(run_dir, "checkpoints"),
                                  checkpoint or ckpt_lib.CheckpointConfig()) as checkpointer:
        ref = load_reference(reference, model, runtime, in_state=True) \
            if selection.mode == "slm" else None
        trainer = _make_trainer(runtime, model, selection, ref, tx, schedule, data, grad_accum,
                                num_steps, checkpointer, scored_data)
        state, data_state = trainer.initial_state(seed, init_checkpoint,
                                                  init_binding="train.init_checkpoint")
        start = int(jax.device_get(state.step))
        batches = train_hooks.DataStats(
            batch_source(runtime.batch_sharding(), start) if batch_source else
            _batches(data, scored_data, runtime, start, data_state,
                     where=checkpointer.step_dir(start)))
        evaluator = train_hooks.Evaluator(
            _eval_hooks(eval_data, eval_batches, few_shot_eval, evals),
            train_hooks.EvalContext(model, data, runtime), eval_every)
        # Written once every checkpoint, reference and data input has loaded, so
        # a run that fails on bad input leaves run_dir as it was.
        log.start()
        logger = _start_records(run_dir, runtime, model, ref, data, start, num_steps, progress, {
            "job": "train", "num_steps": num_steps, "grad_accum": grad_accum,
            "scored_data": scored_data, "reference_dtype": ref and ref.forward.dtype,
            **_configs_as_dicts(model=model, data=data, selection=selection,
                                reference=reference, optimizer=optimizer, mesh_config=mesh)})
        summary, closers = _add_hooks(trainer, logger, evaluator, batches, checkpointer,
                                      log_every=log_every, on_nonfinite=on_nonfinite,
                                      profile=profile, run_dir=run_dir,
                                      seekable=bool(scored_data or batch_source))
        first_eval = eval_first and start == 0 and evaluator and (
            lambda params: logger.log_eval(0, evaluator, params))
        state = _run(trainer, state, ref, batches, closers, first_eval)
    summary["step"] = int(jax.device_get(state.step))
    return summary
