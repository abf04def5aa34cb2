"""The hooks the trainer runs beside the step (trainer.py): evaluation, the non-finite
guard, the preemption watcher (SIGTERM and multi-host preemption notices), the profiler
and the data loader's wait time and skipped-document count.

An eval hook is anything with `make_hook(context) -> fn(params) -> dict of metrics`; the
train job logs the dicts under `eval_` every `eval_every` steps and at the end.
`HeldOutLossEval` is one; slm_jax/evals/ holds the few-shot and lm-eval ones.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence

import gin
import jax
import numpy as np

from slm_jax import model as model_lib
from slm_jax.data import iterator
from slm_jax.slm.train_step import make_eval_step


@dataclasses.dataclass(frozen=True)
class EvalContext:
    """What an eval hook may use to build itself."""

    model: model_lib.ModelConfig
    data: object        # the training DataConfig (its tokenizer, its batch size)
    runtime: object     # slm_jax.parallel.runtime.Runtime


@gin.configurable
@dataclasses.dataclass(frozen=True)
class HeldOutLossEval:
    """Token-weighted mean loss over the first `num_batches` batches of held-out `data`."""

    data: object = None   # a DataConfig of held-out files
    num_batches: int = 8

    def make_hook(self, context: EvalContext) -> Callable[[object], dict]:
        eval_fn = context.runtime.jit_eval(make_eval_step(context.model),
                                           context.model)

        def hook(params) -> dict:
            batches = iterator.global_batches(self.data, context.runtime.mesh,
                                              context.runtime.batch_sharding(), repeat=False)
            loss_sum, weight_sum = 0.0, 0.0
            for batch in itertools.islice(batches, self.num_batches):
                s, w = jax.device_get(eval_fn(params, batch))
                loss_sum, weight_sum = loss_sum + float(s), weight_sum + float(w)
            return {"loss": loss_sum / max(weight_sum, 1.0)}
        return hook


class Evaluator:
    """Runs every eval hook on the params and merges their metrics."""

    def __init__(self, hooks: Sequence, context: EvalContext, every: int):
        self._hooks = [h.make_hook(context) if hasattr(h, "make_hook") else h for h in hooks]
        self.every = every

    def __bool__(self) -> bool:
        return bool(self._hooks)

    def due(self, step: int, num_steps: int) -> bool:
        """Mid-run evals; the final one runs after the loop."""
        return bool(self._hooks) and self.every > 0 and step % self.every == 0 and step < num_steps

    def __call__(self, params) -> dict:
        metrics = {}
        for hook in self._hooks:
            metrics.update(hook(params))
        return metrics


class NonFiniteError(ValueError):
    pass


ON_NONFINITE = ("stop", "skip")


def check_finite(metrics, step: int, on_nonfinite: str) -> None:
    """The step never applies a non-finite update; "stop" also ends the run here."""
    if on_nonfinite == "stop" and float(jax.device_get(metrics["skipped"])) > 0:
        raise NonFiniteError(
            f"non-finite loss or gradient at step {step} (loss="
            f"{float(jax.device_get(metrics['loss']))}); the update was not applied and no "
            "checkpoint was written after it. Lower OptimizerConfig.learning_rate, check the "
            "data, or set on_nonfinite='skip' to skip such updates.")


class FiniteGuard:
    """A trainer hook run every step: checks the *previous* step's metrics, so the host
    never waits for the step it just dispatched; `check_now` is for the step about to be
    checkpointed (never save a bad state)."""

    def __init__(self, on_nonfinite: str):
        self.on_nonfinite, self._last = on_nonfinite, None

    def __call__(self, info) -> None:
        if self._last is not None:
            check_finite(self._last, info.step - 1, self.on_nonfinite)
        self._last = info.metrics

    def check_now(self, info) -> None:
        check_finite(info.metrics, info.step, self.on_nonfinite)


class CheckpointHook:
    """A trainer hook run every step: asks the preemption watcher first (a stop is
    requested on SIGTERM/Ctrl-C or a multi-host preemption notice), then saves when the
    checkpointer's interval is due, at the last step, or before a stop. `data_state()` is
    saved in the same commit (None: the batches are seekable by step)."""

    def __init__(self, checkpointer, preemption, guard: FiniteGuard, data_state):
        self.checkpointer, self.preemption, self.guard = checkpointer, preemption, guard
        self.data_state = data_state

    def __call__(self, info) -> None:
        if self.preemption.reached(self.checkpointer, info.step):
            info.request_stop()
        if info.stopping or info.last or self.checkpointer.due(info.step):
            self.guard.check_now(info)
            self.checkpointer.save(info.state, force=True, data_state=self.data_state())


class PreemptionWatcher:
    """SIGTERM (TPU maintenance, spot reclaim) or Ctrl-C (SIGINT) -> finish the step,
    checkpoint, exit 0; the same command resumes.

    Multi-host runs leave SIGTERM to JAX's preemption service (installed by
    jax.distributed.initialize) and ask orbax whether it has seen a preemption
    on any host, so every host stops at the same step; a Python handler here
    would replace JAX's and let one host stop alone.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self._previous = {}
        self._multi_process = jax.process_count() > 1
        if not self._multi_process and threading.current_thread() is threading.main_thread():
            # An ignored signal stays ignored (SIGINT under `nohup ... &`), as Python leaves it.
            self._previous = {s: signal.signal(s, self._on_signal) for s in self.SIGNALS
                              if signal.getsignal(s) is not signal.SIG_IGN}

    def _on_signal(self, signum, frame):
        self.requested = True

    def reached(self, checkpointer, step: int) -> bool:
        if self._multi_process:
            return checkpointer.reached_preemption(step)
        return self.requested

    def close(self):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


class Profiler:
    """A jax.profiler trace of steps [start, start + num_steps) into `directory`
    (TensorBoard's profile plugin and Perfetto open it); `train.profile = (start, num_steps)`."""

    def __init__(self, directory: str, profile):
        self.directory = directory
        self.start, self.stop = (profile[0], profile[0] + profile[1]) if profile else (-1, -1)
        self.active = False

    def before_step(self, step: int) -> None:
        if step == self.start:
            jax.profiler.start_trace(self.directory)
            self.active = True

    def after_step(self, step: int, metrics) -> None:
        """`step` is the number of steps done; waits for the device before closing."""
        if self.active and step >= self.stop:
            jax.block_until_ready(metrics)
            self.close()

    def close(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
            logging.info("profile of steps [%d, %d) written to %s", self.start, self.stop,
                         self.directory)


class DataStats:
    """The trainer's batches, timed: `next()` passes them through and counts the seconds the
    host waited for them. `add_to(metrics)` adds `data_wait_s` (waited since the last call)
    and `data_skipped_docs` (empty or non-UTF-8 documents dropped so far, all hosts; a
    warning each time the count grows). Other attributes (`state()`) are the batches'."""

    def __init__(self, batches):
        self._batches, self._reported, self._wait = batches, 0, 0.0

    def __iter__(self):
        return self

    def __next__(self):
        start = time.perf_counter()
        batch = next(self._batches)
        self._wait += time.perf_counter() - start
        return batch

    def __getattr__(self, name):
        return getattr(self._batches, name)

    def add_to(self, metrics: dict) -> dict:
        metrics, self._wait = {**metrics, "data_wait_s": self._wait}, 0.0
        count = getattr(self._batches, "skipped_documents", None)
        if count is not None and jax.process_count() > 1:
            from jax.experimental import multihost_utils
            count = int(multihost_utils.process_allgather(np.int64(count)).sum())
        if not count:
            return metrics
        if count > self._reported:
            logging.warning("skipped %d empty or non-UTF-8 documents so far "
                            "(data_skipped_docs in metrics.jsonl)", count)
            self._reported = count
        return {**metrics, "data_skipped_docs": count}
