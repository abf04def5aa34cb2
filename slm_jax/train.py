"""The `train` job: CLM or SLM training of one model, sharded, checkpointed, resumable.

Step 1 of SLM (the reference model) is this job in "clm" mode on the
high-quality data; step 3 (the student) is this job in "slm" mode with
`train.reference_checkpoint` pointing at step 1's checkpoints.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import signal
import threading

import gin
import jax
import jax.numpy as jnp
import numpy as np

from slm_jax import checkpoint as ckpt_lib
from slm_jax import model as model_lib
from slm_jax import partition, scoring, sharding
from slm_jax.data import pipeline
from slm_jax.metrics_log import MetricsLogger
from slm_jax.optim import OptimizerConfig, make_optimizer
from slm_jax.run_record import write_run_record
from slm_jax.selection import SelectionConfig
from slm_jax.train_step import make_eval_step, make_train_step


def _check_shapes(model, data, selection, reference_checkpoint, scored_data, grad_accum, mesh):
    if data.seq_len > model.max_seq_len:
        raise ValueError(
            f"DataConfig.seq_len={data.seq_len} is longer than ModelConfig.max_seq_len="
            f"{model.max_seq_len}; lower --gin.DataConfig.seq_len or raise the model's maximum.")
    if selection.mode == "slm" and not reference_checkpoint:
        raise ValueError("SelectionConfig.mode='slm' needs a reference model: set "
                         "--gin.train.reference_checkpoint to the checkpoints/ directory of "
                         "a reference `train` run.")
    if selection.mode == "slm_offline" and not scored_data:
        raise ValueError("SelectionConfig.mode='slm_offline' needs stored reference losses: set "
                         "--gin.train.scored_data to the out_dir of a `score` job.")
    dp = sharding.data_parallel_size(mesh)
    if grad_accum < 1 or data.global_batch_size % grad_accum:
        raise ValueError(f"DataConfig.global_batch_size={data.global_batch_size} is not divisible "
                         f"by train.grad_accum={grad_accum}.")
    micro = data.global_batch_size // grad_accum
    if micro % dp:
        raise ValueError(
            f"micro-batch of {micro} sequences (DataConfig.global_batch_size="
            f"{data.global_batch_size} / train.grad_accum={grad_accum}) is not divisible by "
            f"the data-parallel size {dp} (MeshConfig data x fsdp); set "
            f"--gin.DataConfig.global_batch_size to a multiple of {dp * grad_accum} or change "
            "--gin.MeshConfig.data/fsdp.")


class NonFiniteError(ValueError):
    pass


def _check_finite(metrics, step: int, on_nonfinite: str):
    """The step never applies a non-finite update; "stop" also ends the run here."""
    if on_nonfinite == "stop" and float(jax.device_get(metrics["skipped"])) > 0:
        raise NonFiniteError(
            f"non-finite loss or gradient at step {step} (loss="
            f"{float(jax.device_get(metrics['loss']))}); the update was not applied and no "
            "checkpoint was written after it. Lower OptimizerConfig.learning_rate, check the "
            "data, or set --gin.train.on_nonfinite=skip to skip such updates.")


class PreemptionWatcher:
    """SIGTERM (TPU maintenance, spot reclaim) -> finish the step, checkpoint, exit 0.

    Multi-host runs leave SIGTERM to JAX's preemption service (installed by
    jax.distributed.initialize) and ask orbax whether it has seen a preemption
    on any host, so every host stops at the same step; a Python handler here
    would replace JAX's and let one host stop alone.
    """

    def __init__(self):
        self.requested = False
        self._previous = None
        self._multi_process = jax.process_count() > 1
        if not self._multi_process and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame):
        self.requested = True

    def reached(self, checkpointer, step: int) -> bool:
        if self._multi_process:
            return checkpointer.reached_preemption(step)
        return self.requested

    def close(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _skipped_docs(batches) -> int | None:
    """Empty or non-UTF-8 documents the data streams dropped so far, summed over hosts."""
    count = getattr(batches, "skipped_documents", None)
    if count is not None and jax.process_count() > 1:
        from jax.experimental import multihost_utils
        count = int(multihost_utils.process_allgather(np.int64(count)).sum())
    return count


def evaluate(eval_fn, params, batches) -> float:
    """Token-weighted mean loss over `batches`."""
    loss_sum, weight_sum = 0.0, 0.0
    for batch in batches:
        s, w = jax.device_get(eval_fn(params, batch))
        loss_sum, weight_sum = loss_sum + float(s), weight_sum + float(w)
    return loss_sum / max(weight_sum, 1.0)


@gin.configurable(denylist=["progress", "eval_hook"])
def train(run_dir: str = gin.REQUIRED, *,
          num_steps: int = 1000,
          model: model_lib.ModelConfig | None = None,
          data: pipeline.DataConfig | None = None,
          selection: SelectionConfig | None = None,
          optimizer: OptimizerConfig | None = None,
          mesh: sharding.MeshConfig | None = None,
          checkpoint: ckpt_lib.CheckpointConfig | None = None,
          reference_checkpoint: str | None = None,
          reference_model: model_lib.ModelConfig | None = None,
          reference_dtype: str = "bfloat16",
          scored_data: str | None = None,
          init_checkpoint: str | None = None,
          grad_accum: int = 1,
          loss_chunk_size: int = 1024,
          log_every: int = 10,
          eval_data: pipeline.DataConfig | None = None,
          eval_every: int = 0,
          eval_batches: int = 8,
          few_shot_eval=None,
          seed: int = 0,
          on_nonfinite: str = "stop",
          progress: bool = True,
          eval_hook=None) -> dict:
    """Trains for `num_steps` (resuming from `run_dir/checkpoints` if present).

    Args:
      run_dir: where checkpoints, metrics.jsonl and TensorBoard logs go.
      reference_checkpoint: checkpoints of the frozen reference model (mode "slm").
      reference_model: its ModelConfig when it differs from the student's.
      reference_dtype: dtype of the reference forward: its params are cast to it and its
        matmuls and activations run in it (norms, softmax and the loss stay fp32).
      scored_data: out_dir of a `score` job; the batches (and, in mode
        "slm_offline", their reference losses) come from there instead of
        `data`'s files, so runs of any mode can train on the same tokens.
      init_checkpoint: start the params from this checkpoint (e.g. the base
        model) instead of a random init with `seed`.
      grad_accum: micro-batches per step; selection ranks within each one.
      eval_data: held-out data, evaluated every `eval_every` steps and at the end.
      on_nonfinite: a NaN/Inf loss or gradient is never applied; "stop" ends the
        run with an error naming the step (the last checkpoint stays the last
        good one), "skip" goes on with the next batch.
      eval_hook: (params) -> dict of extra eval metrics (e.g. accuracy), logged
        with the eval loss.
      few_shot_eval: a `FewShotEvalConfig` (slm_jax/math_eval/job.py): few-shot
        accuracy every `eval_every` steps and at the end, logged as eval_{name}_accuracy.

    Returns:
      The last logged train metrics and the final eval loss ("eval_loss").
    """
    model = model or model_lib.ModelConfig()
    data = data or pipeline.DataConfig()
    selection = selection or SelectionConfig()
    optimizer = optimizer or OptimizerConfig()
    mesh_config = mesh or sharding.MeshConfig()
    reference_model = reference_model or model
    reference_forward = model_lib.computing_in(reference_model, reference_dtype,
                                               "train.reference_dtype")
    if reference_model.vocab_size != model.vocab_size:
        raise ValueError(f"reference vocab_size {reference_model.vocab_size} != student "
                         f"vocab_size {model.vocab_size}; excess loss compares the two per token, "
                         "so both need the same tokenizer: train the reference with the student's "
                         "vocabulary (or set the student's ModelConfig.vocab_size to match).")
    if on_nonfinite not in ("stop", "skip"):
        raise ValueError(f"train.on_nonfinite={on_nonfinite!r} must be 'stop' or 'skip'.")
    mesh = sharding.make_mesh(mesh_config)
    _check_shapes(model, data, selection, reference_checkpoint, scored_data, grad_accum, mesh)
    # Bad data paths or tokenizers fail here, before anything in run_dir is touched.
    for config in ([] if scored_data else [data]) + ([eval_data] if eval_data else []):
        pipeline.register_task(config)
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as e:
        raise ValueError(f"train.run_dir={run_dir!r} is not writable ({e.strerror}); "
                         "choose another --gin.train.run_dir.") from e
    if not os.access(run_dir, os.W_OK):
        raise ValueError(f"train.run_dir={run_dir!r} is not writable; choose another "
                         "--gin.train.run_dir.")
    tx, schedule = make_optimizer(optimizer, num_steps)
    state_sh = partition.state_shardings(model, tx, mesh, mesh_config.rules)
    data_state_dir = os.path.join(run_dir, "data_state")
    checkpointer = ckpt_lib.Checkpointer(os.path.join(run_dir, "checkpoints"),
                                         checkpoint or ckpt_lib.CheckpointConfig())
    with sharding.activation_sharding(mesh, mesh_config.rules):
        if checkpointer.latest_step() is not None:
            state = checkpointer.restore(partition.abstract_train_state(model, tx), state_sh)
            logging.info("resumed from step %d", int(state.step))
        else:
            state = partition.init_state(model, tx, jax.random.key(seed), state_sh)
            if init_checkpoint:
                params = ckpt_lib.restore_params(
                    init_checkpoint, model_lib.abstract_params(model), state_sh.params,
                    binding="train.init_checkpoint")
                state = state.replace(params=params, opt_state=jax.jit(
                    tx.init, out_shardings=state_sh.opt_state)(params))

        ref_params, ref_sh = None, None
        if selection.mode == "slm":
            ref_sh = partition.param_shardings(reference_model, mesh, mesh_config.rules)
            ref_params = ckpt_lib.restore_params(
                reference_checkpoint, model_lib.abstract_params(reference_model), ref_sh,
                binding="train.reference_checkpoint")
            dtype = jnp.dtype(reference_dtype)
            ref_params = jax.jit(lambda p: jax.tree.map(lambda x: x.astype(dtype), p),
                                 out_shardings=ref_sh)(ref_params)

        step_fn = partition.jit_train_step(
            make_train_step(model, selection, tx, schedule, grad_accum=grad_accum,
                            loss_chunk_size=loss_chunk_size,
                            reference_model_config=reference_forward),
            state_sh, ref_sh, mesh,
            batch_keys=scoring.SCORED_KEYS if scored_data else partition.BATCH_KEYS)
        eval_fn = partition.jit_eval_step(make_eval_step(model, loss_chunk_size),
                                          state_sh.params, mesh)

        if few_shot_eval is not None:
            few_shot = few_shot_eval.make_hook(model, data.vocab_path)
            eval_hook = (lambda p, extra=eval_hook: {**extra(p), **few_shot(p)}) \
                if eval_hook else few_shot

        def eval_metrics():
            metrics = {}
            if eval_data is not None:
                batches = pipeline.global_batches(eval_data, mesh, sharding.batch_sharding(mesh),
                                                  repeat=False)
                metrics["loss"] = evaluate(eval_fn, state.params,
                                           itertools.islice(batches, eval_batches))
            return {**metrics, **(eval_hook(state.params) if eval_hook else {})}

        start = int(jax.device_get(state.step))
        if scored_data:
            batches = scoring.scored_batches(scored_data, data, mesh, sharding.batch_sharding(mesh),
                                             start_step=start)
        else:
            # Continues the data order at the resumed step from the positions
            # saved with its checkpoint (replaying up to it if they are missing).
            batches = pipeline.make_train_iterator(
                    data, mesh, sharding.batch_sharding(mesh),
                    restore_from=(data_state_dir, start))
        # Written once every checkpoint, reference and data input has loaded, so
        # a run that fails on bad input leaves run_dir as it was.
        write_run_record(run_dir, mesh, {
            "job": "train", "num_steps": num_steps, "grad_accum": grad_accum,
            "reference_checkpoint": reference_checkpoint, "scored_data": scored_data,
            **{name: dataclasses.asdict(cfg) for name, cfg in [
                ("model", model), ("data", data), ("selection", selection),
                ("optimizer", optimizer), ("mesh_config", mesh_config)]}})
        logger = MetricsLogger(run_dir, total_steps=num_steps, start_step=start,
                               tokens_per_step=data.global_batch_size * data.seq_len,
                               name=os.path.basename(os.path.normpath(run_dir)), progress=progress)
        summary = {}
        preemption = PreemptionWatcher()
        last_metrics = None  # checked one step late so the host never stalls the device
        reported_skips = 0
        try:
            for step in range(start, num_steps):
                state, metrics = step_fn(state, ref_params, next(batches))
                done = step + 1
                if last_metrics is not None:
                    _check_finite(last_metrics, done - 1, on_nonfinite)
                last_metrics = metrics
                logger.step_done(done)
                if done % log_every == 0 or done == num_steps:
                    skipped_docs = _skipped_docs(batches)
                    if skipped_docs:
                        metrics = {**metrics, "data_skipped_docs": skipped_docs}
                        if skipped_docs > reported_skips:
                            logging.warning("skipped %d empty or non-UTF-8 documents so far "
                                            "(data_skipped_docs in metrics.jsonl)", skipped_docs)
                            reported_skips = skipped_docs
                    summary = logger.log(done, metrics)
                if (eval_data is not None or eval_hook) and eval_every and done % eval_every == 0 \
                        and done < num_steps:
                    logger.log(done, eval_metrics(), prefix="eval_")
                stop = preemption.reached(checkpointer, done)
                if stop or checkpointer.due(done) or done == num_steps:
                    _check_finite(metrics, done, on_nonfinite)  # never checkpoint a bad state
                    checkpointer.save(state, force=True)
                    if not scored_data:  # scored batches are seekable by step already
                        batches.save(data_state_dir, done, keep=checkpointer.config.keep)
                if stop:
                    logging.warning("preempted: checkpoint of step %d written; exiting", done)
                    print(f"[{logger.name}] preempted at step {done}; checkpoint saved, "
                          "re-run the same command to resume", flush=True)
                    summary["preempted"] = True
                    break
            else:
                if eval_data is not None or eval_hook:
                    final = eval_metrics()
                    summary.update({"eval_" + k: v for k, v in final.items()})
                    logger.log(num_steps, final, prefix="eval_")
        finally:
            preemption.close()
            checkpointer.close()
            logger.close()
    summary["step"] = int(jax.device_get(state.step))
    return summary
