"""The train loop (slm_jax/trainer/trainer.py): hooks run when due, in the order added; a
stop request ends the run after the hooks of that step; final hooks run once the run is
complete (also on a resume at its last step), not after a stop."""

import dataclasses

import pytest

from slm_jax.trainer.trainer import Trainer


@dataclasses.dataclass
class State:
    step: int


def step_fn(state, ref_params, batch):
    return State(state.step + 1), {"batch": batch, "ref": ref_params}


def make(num_steps):
    return Trainer(step_fn, num_steps, checkpointer=None, runtime=None, model=None, tx=None,
                   state_shardings=None)


def test_hooks_run_when_due_in_order_with_the_step_and_its_metrics():
    trainer, seen = make(7), []
    trainer.add_before_step(lambda step: seen.append(("before", step)))
    trainer.add_hook(lambda info: seen.append(("every3", info.step, info.metrics["batch"])),
                     every=3, at_last=True)
    trainer.add_hook(lambda info: seen.append(("never", info.step)), every=0)
    trainer.add_hook(lambda info: seen.append(("last", info.step)) if info.last else None)
    trainer.add_final_hook(lambda state: seen.append(("final", state.step)))
    state, info = trainer.run(State(2), "ref", iter(range(100, 200)))
    assert state.step == 7 and info.step == 7 and info.last and info.metrics["ref"] == "ref"
    assert seen == [("before", 2), ("every3", 3, 100), ("before", 3), ("before", 4),
                    ("before", 5), ("every3", 6, 103), ("before", 6), ("every3", 7, 104),
                    ("last", 7), ("final", 7)]


def test_a_stop_request_runs_the_at_last_hooks_of_that_step_and_skips_the_final_ones():
    trainer, seen = make(10), []
    trainer.add_hook(lambda info: info.step == 4 and info.request_stop())
    trainer.add_hook(lambda info: seen.append(("save", info.step, info.stopping)), every=5,
                     at_last=True)
    trainer.add_final_hook(lambda state: seen.append("final"))
    state, info = trainer.run(State(0), None, iter(range(100)))
    assert state.step == 4 and info.stopping and not info.last
    assert seen == [("save", 4, True)]


@pytest.mark.parametrize("start", [5, 6])
def test_a_run_resumed_at_its_end_runs_no_step_but_the_final_hooks(start):
    trainer, seen = make(5), []
    trainer.add_hook(lambda info: seen.append(info.step))
    trainer.add_final_hook(lambda state: seen.append(("final", state.step)))
    state, info = trainer.run(State(start), None, iter(()))
    assert state.step == start and info is None and seen == [("final", start)]
