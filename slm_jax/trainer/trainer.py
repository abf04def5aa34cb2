"""The train loop and the hooks it runs (Levanter's shape).

    trainer = Trainer(step_fn, num_steps)
    trainer.add_hook(log_metrics, every=10, at_last=True)
    trainer.add_hook(checkpoint)                      # every step; decides itself when to save
    trainer.add_final_hook(final_eval)                # once the last step is done
    state, info = trainer.run(state, ref_params, batches, start=step)

`initial_state` (resume, else an init checkpoint's params, else a fresh init) lives beside
the loop. Hooks read the step's metrics as device arrays: nothing here waits on the device,
so dispatch stays asynchronous unless a hook (the finite guard, a due log line) reads them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator

import jax

from slm_jax.parallel import partition


@dataclasses.dataclass
class StepInfo:
    """What a hook sees after a step: `step` steps are done."""

    step: int
    state: object
    metrics: dict        # this step's metrics, on device
    last: bool           # the run's final step
    stopping: bool = False   # a stop was requested at this step (preemption): save and end

    def request_stop(self) -> None:
        self.stopping = True


@dataclasses.dataclass(frozen=True)
class _Hook:
    fn: Callable[[StepInfo], None]
    every: int
    at_last: bool

    def due(self, info: StepInfo) -> bool:
        return (self.every > 0 and info.step % self.every == 0) or (self.at_last and info.last)


class Trainer:
    """Runs `step_fn(state, ref_params, batch) -> (state, metrics)` from the initial state's
    step to `num_steps`; after each step, every due hook in the order added."""

    def __init__(self, step_fn: Callable, num_steps: int, *, checkpointer, runtime, model, tx,
                 state_shardings, self_reference=None):
        self.step_fn, self.num_steps = step_fn, num_steps
        self.checkpointer, self.runtime, self.model, self.tx = checkpointer, runtime, model, tx
        self.state_shardings, self.self_reference = state_shardings, self_reference
        self._hooks: list[_Hook] = []
        self._before_step: list[Callable[[int], None]] = []
        self._final: list[Callable[[object], None]] = []

    def initial_state(self, seed: int, init_checkpoint: str | None = None, *,
                      init_binding: str = "init_checkpoint"):
        """(state, saved data state or None): resume from the checkpointer's directory, else
        `init_checkpoint`'s params with a fresh optimizer state, else a fresh init from
        `seed`. Errors about `init_checkpoint` name `init_binding`. An in-state reference
        (EMA/snapshot) starts from the params the run starts from."""
        model, tx, state_sh, self_ref = self.model, self.tx, self.state_shardings, \
            self.self_reference
        if self.checkpointer.latest_step() is not None:
            state = self.checkpointer.restore_latest_readable(
                partition.abstract_train_state(model, tx, self_ref), state_sh)
            step = int(jax.device_get(state.step))
            logging.info("resumed from step %d", step)
            if self_ref is not None and state.ref_params is None:
                logging.info("the checkpoint of step %d holds no reference params (written "
                             "before ReferenceConfig.source=%r); the %s starts from its params",
                             step, self_ref.kind, self_ref.describe())
                state = self._with_initial_reference(state)
            return state, self.checkpointer.restore_data_state(step)
        state = partition.init_state(model, tx, jax.random.key(seed), state_sh, self_ref)
        if init_checkpoint:
            params = self.runtime.restore_params(init_checkpoint, model, binding=init_binding)
            state = self._with_initial_reference(state.replace(params=params, opt_state=jax.jit(
                tx.init, out_shardings=state_sh.opt_state)(params)))
        return state, None

    def _with_initial_reference(self, state):
        if self.self_reference is None:
            return state
        return state.replace(ref_params=jax.jit(
            self.self_reference.initial,
            out_shardings=self.state_shardings.ref_params)(state.params))

    def add_hook(self, fn: Callable[[StepInfo], None], every: int = 1, *,
                 at_last: bool = False) -> None:
        """`fn(info)` after every `every`-th step (0: never) and, with `at_last`, after the
        final one and after a step that requested a stop. A hook that calls
        `info.request_stop()` ends the run after this step; later hooks of the same step
        see `info.stopping`."""
        self._hooks.append(_Hook(fn, every, at_last))

    def add_before_step(self, fn: Callable[[int], None]) -> None:
        """`fn(step)` before step `step` (0-based) is dispatched (e.g. a profiler start)."""
        self._before_step.append(fn)

    def add_final_hook(self, fn: Callable[[object], None]) -> None:
        """`fn(state)` once the run reached `num_steps` (also when it resumed there), not
        after a stop."""
        self._final.append(fn)

    def run(self, state, ref_params, batches: Iterator):
        """(final state, the last StepInfo or None when no step ran)."""
        info = None
        for step in range(int(jax.device_get(state.step)), self.num_steps):
            for fn in self._before_step:
                fn(step)
            state, metrics = self.step_fn(state, ref_params, next(batches))
            info = StepInfo(step + 1, state, metrics, last=step + 1 == self.num_steps)
            for hook in self._hooks:
                if hook.due(info) or (info.stopping and hook.at_last):
                    hook.fn(info)
            if info.stopping:
                return state, info
        for fn in self._final:
            fn(state)
        return state, info
