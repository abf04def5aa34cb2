"""The `train` job: CLM or SLM training of one model, sharded, checkpointed, resumable.

Step 1 of SLM (the reference model) is this job in "clm" mode on the high-quality data;
step 3 (the student) is this job in "slm" mode with `ReferenceConfig.checkpoint` pointing
at step 1's checkpoints (or "slm_offline" with `train.scored_data` from step 2).
Evaluation, the non-finite guard and preemption are the small pieces in train_hooks.py.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import gin
import jax

from slm_jax import console
from slm_jax import model as model_lib
from slm_jax.data import BATCH_KEYS, iterator, pipeline, scored
from slm_jax.jobs import checks, perf, train_hooks
from slm_jax.jobs.metrics_log import MetricsLogger
from slm_jax.jobs.run_record import write_run_record
from slm_jax.parallel import checkpoint as ckpt_lib
from slm_jax.parallel import partition, sharding
from slm_jax.parallel.runtime import Runtime
from slm_jax.slm.optim import OptimizerConfig, make_optimizer
from slm_jax.slm.reference import ReferenceConfig, load_reference
from slm_jax.slm.selection import SelectionConfig
from slm_jax.slm.train_step import make_train_step

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
    if selection.mode == "slm":
        if not reference.checkpoint:
            raise ValueError("SelectionConfig.mode='slm' needs a reference model: set "
                             "--gin.ReferenceConfig.checkpoint to the checkpoints/ directory of "
                             "a reference `train` run.")
        reference.check_compatible(model)
    if selection.mode == "slm_offline" and not scored_data:
        raise ValueError("SelectionConfig.mode='slm_offline' needs stored reference losses: set "
                         "--gin.train.scored_data to the out_dir of a `score` job.")
    if on_nonfinite not in ("stop", "skip"):
        raise ValueError(f"train.on_nonfinite={on_nonfinite!r} must be 'stop' or 'skip'; set "
                         "--gin.train.on_nonfinite.")
    checks.check_context(data, model)
    checks.check_batch(data, runtime, grad_accum)
    checks.check_tokenizers(data, model, reference if selection.mode == "slm" else None)


def _prepare_run_dir(run_dir: str) -> None:
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as e:
        raise ValueError(f"train.run_dir={run_dir!r} is not writable ({e.strerror}); "
                         "choose another --gin.train.run_dir.") from e
    if not os.access(run_dir, os.W_OK):
        raise ValueError(f"train.run_dir={run_dir!r} is not writable; choose another "
                         "--gin.train.run_dir.")


def _initial_state(checkpointer, runtime, model, tx, state_sh, seed, init_checkpoint):
    """(state, saved data state): resume from run_dir, else start from `init_checkpoint`'s
    params or a fresh init."""
    if checkpointer.latest_step() is not None:
        state = checkpointer.restore_latest_readable(partition.abstract_train_state(model, tx),
                                                     state_sh)
        step = int(jax.device_get(state.step))
        logging.info("resumed from step %d", step)
        return state, checkpointer.restore_data_state(step)
    state = partition.init_state(model, tx, jax.random.key(seed), state_sh)
    if init_checkpoint:
        params = runtime.restore_params(init_checkpoint, model, binding="train.init_checkpoint")
        state = state.replace(params=params, opt_state=jax.jit(
            tx.init, out_shardings=state_sh.opt_state)(params))
    return state, None


def _batches(data, scored_data, runtime, start, data_state, where):
    if scored_data:  # seekable by step: nothing to restore
        return scored.scored_batches(scored_data, data, runtime.mesh, runtime.batch_sharding(),
                                     start_step=start)
    return iterator.make_train_iterator(data, runtime.mesh, runtime.batch_sharding(),
                                        start_step=start, saved_state=data_state, where=where)


def _flops_per_token(model, ref, seq_len) -> float:
    """Model FLOPs of one trained token: the student's step plus the reference's forward."""
    return perf.flops_per_token(model, seq_len) + (
        perf.forward_flops_per_token(ref.forward, seq_len) if ref else 0.0)


def _configs_as_dicts(**configs) -> dict:
    return {name: dataclasses.asdict(config) for name, config in configs.items()}


def _eval_hooks(eval_data, eval_batches, few_shot_eval, evals) -> list:
    """The shorthand bindings (eval_data, few_shot_eval) and the general list, as one list."""
    hooks = [train_hooks.HeldOutLossEval(eval_data, eval_batches)] if eval_data else []
    return hooks + ([few_shot_eval] if few_shot_eval else []) + list(evals)


@gin.configurable(denylist=["progress"])
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
          loss_chunk_size: int = 1024,
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
          progress: bool = True) -> dict:
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
      few_shot_eval: a `FewShotEvalConfig` (slm_jax/jobs/math_eval.py): few-shot accuracy.
      evals: more eval hooks (train_hooks.py); all of them run every `eval_every` steps
        and at the end, logged with an `eval_` prefix.
      eval_first: a fresh run also evaluates its initial params (logged as step 0): where
        a curve of a run from a pretrained checkpoint starts.
      on_nonfinite: a NaN/Inf loss or gradient is never applied; "stop" ends the
        run with an error naming the step (the last checkpoint stays the last
        good one), "skip" goes on with the next batch.
      profile: (first step, number of steps) to trace with jax.profiler into
        `run_dir/profile/` (TensorBoard's profile plugin, Perfetto).

    Returns:
      The last logged train metrics and the final eval metrics ("eval_loss", ...).
    """
    model, data = model or model_lib.ModelConfig(), data or pipeline.DataConfig()
    selection, optimizer = selection or SelectionConfig(), optimizer or OptimizerConfig()
    reference, mesh = reference or ReferenceConfig(), mesh or sharding.MeshConfig()
    runtime = Runtime.from_config(mesh)
    _check_counts(num_steps=num_steps, log_every=log_every, eval_every=eval_every,
                  eval_batches=eval_batches, grad_accum=grad_accum)
    _check_config(model, data, selection, reference, scored_data, grad_accum, on_nonfinite,
                  runtime)
    # Bad data paths or tokenizers fail here, before anything in run_dir is touched.
    for config in ([] if scored_data else [data]) + ([eval_data] if eval_data else []):
        pipeline.register_task(config)
    _prepare_run_dir(run_dir)
    tx, schedule = make_optimizer(optimizer, num_steps)
    state_sh = runtime.state_shardings(model, tx)
    with console.log_file(os.path.join(run_dir, "log.txt"), start=False) as log, \
            runtime.activate(), \
            ckpt_lib.Checkpointer(os.path.join(run_dir, "checkpoints"),
                                  checkpoint or ckpt_lib.CheckpointConfig()) as checkpointer:
        state, data_state = _initial_state(checkpointer, runtime, model, tx, state_sh, seed,
                                           init_checkpoint)
        ref = load_reference(reference, model, runtime) if selection.mode == "slm" else None
        step_fn = partition.jit_train_step(
            make_train_step(model, selection, tx, schedule, grad_accum=grad_accum,
                            loss_chunk_size=loss_chunk_size,
                            reference_model_config=ref and ref.forward),
            state_sh, ref and ref.shardings, runtime.mesh,
            batch_keys=scored.SCORED_KEYS if scored_data else BATCH_KEYS)
        evaluator = train_hooks.Evaluator(
            _eval_hooks(eval_data, eval_batches, few_shot_eval, evals),
            train_hooks.EvalContext(model, data, runtime, loss_chunk_size), eval_every)
        start = int(jax.device_get(state.step))
        batches = train_hooks.DataStats(_batches(data, scored_data, runtime, start, data_state,
                                                 where=checkpointer.step_dir(start)))
        # Written once every checkpoint, reference and data input has loaded, so
        # a run that fails on bad input leaves run_dir as it was.
        log.start()
        write_run_record(run_dir, runtime.mesh, {
            "job": "train", "num_steps": num_steps, "grad_accum": grad_accum,
            "scored_data": scored_data, "reference_dtype": ref and ref.forward.dtype,
            **_configs_as_dicts(model=model, data=data, selection=selection,
                                reference=reference, optimizer=optimizer, mesh_config=mesh)})
        logger = MetricsLogger(run_dir, total_steps=num_steps, start_step=start,
                               tokens_per_step=data.global_batch_size * data.seq_len,
                               name=os.path.basename(os.path.normpath(run_dir)), progress=progress,
                               flops_per_token=_flops_per_token(model, ref, data.seq_len))
        preemption = train_hooks.PreemptionWatcher()  # SIGTERM/SIGINT: checkpoint, exit 0
        profiler = train_hooks.Profiler(os.path.join(run_dir, "profile"), profile)
        summary, last_metrics = {}, None  # metrics checked one step late: the host never stalls

        def log_eval(step, params):  # eval time is not counted as train step time
            with logger.paused():
                return logger.log(step, evaluator(params), prefix="eval_")

        try:
            if eval_first and start == 0 and evaluator:
                log_eval(0, state.params)
            for step in range(start, num_steps):
                profiler.before_step(step)
                state, metrics = step_fn(state, ref.params if ref else None, next(batches))
                done = step + 1
                profiler.after_step(done, metrics)
                if last_metrics is not None:
                    train_hooks.check_finite(last_metrics, done - 1, on_nonfinite)
                last_metrics = metrics
                logger.step_done(done)
                if done % log_every == 0 or done == num_steps:
                    summary = logger.log(done, batches.add_to(metrics))
                if evaluator.due(done, num_steps):
                    log_eval(done, state.params)
                stop = preemption.reached(checkpointer, done)
                if stop or checkpointer.due(done) or done == num_steps:
                    train_hooks.check_finite(metrics, done, on_nonfinite)  # never save a bad state
                    checkpointer.save(state, force=True, data_state=None if scored_data
                                      else batches.state())
                if stop:
                    logger.preempted(done)
                    summary["preempted"] = True
                    break
            else:
                if evaluator:
                    summary.update(log_eval(num_steps, state.params))
        finally:
            profiler.close()
            checkpointer.wait()   # a Ctrl-C now must not kill the last save half-written
            preemption.close()
            logger.close()
    summary["step"] = int(jax.device_get(state.step))
    return summary
