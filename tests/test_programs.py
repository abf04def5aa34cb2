"""The programs of a run (slm_jax/trainer/programs.py): listed from the configs alone and
lowered on 8 CPU devices (data 2 x fsdp 2 x tensor 2) without data, checkpoints or a step."""

import dataclasses

import jax
import numpy as np
import pytest

from slm_jax import model as model_lib
from slm_jax.parallel import sharding
from slm_jax.parallel.runtime import Runtime
from slm_jax.slm.optim import OptimizerConfig
from slm_jax.slm.reference import ReferenceConfig
from slm_jax.slm.selection import SelectionConfig
from slm_jax.trainer import programs

TINY = model_lib.ModelConfig(vocab_size=128, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                             mlp_dim=64, max_seq_len=64, dtype="float32", loss_chunk_size=16)
# A reference of another size than the student, in bf16.
REFERENCE = ReferenceConfig(model=dataclasses.replace(TINY, d_model=16, n_heads=2, n_kv_heads=2,
                                                      mlp_dim=32), dtype="bfloat16")
DATA = programs.BatchShape(global_batch_size=8, seq_len=32)  # no files: nothing is read


@pytest.fixture(scope="module")
def runtime():
    return Runtime.from_config(sharding.MeshConfig(data=2, fsdp=2, tensor=2))


@pytest.mark.parametrize("mode, names", [
    ("clm", ["train_step", "eval_step"]),
    ("slm", ["train_step", "eval_step", "score_step"]),
    ("slm_offline", ["train_step", "eval_step", "score_step"]),
])
def test_every_program_of_a_run_lowers_on_eight_devices(runtime, mode, names):
    selection = SelectionConfig(mode=mode, ratio=1.0 if mode == "clm" else 0.6)
    forward = REFERENCE.forward_config(TINY) if mode != "clm" else None
    listed = programs.run_programs(TINY, DATA, selection, OptimizerConfig(), forward, runtime,
                                   grad_accum=2)
    assert [p.name for p in listed] == names
    with runtime.activate():
        lowered = {p.name: p.lower() for p in listed}
    state, ref_params, batch = listed[0].args
    assert sorted(batch) == sorted(
        ["inputs", "targets", "segment_ids", "positions", "loss_weights"]
        + (["ref_loss"] if mode == "slm_offline" else []))
    assert all(b.shape == (8, 32) and b.sharding == runtime.batch_sharding()
               for b in batch.values())
    # The params are FSDP x tensor sharded: some leaf is split over several devices.
    assert any(len(leaf.sharding.device_set) == 8 and not leaf.sharding.is_fully_replicated
               for leaf in jax.tree.leaves(state.params))
    if mode == "slm":
        # The reference is its own model, cast to its forward dtype.
        want = jax.tree.leaves(model_lib.abstract_params(REFERENCE.model))
        assert [(x.shape, x.dtype) for x in jax.tree.leaves(ref_params)] == [
            (w.shape, np.dtype("bfloat16")) for w in want]
    else:
        assert ref_params is None
    # The lowered train step takes exactly these shardings, the old state donated.
    text = lowered["train_step"].as_text()
    assert "jax.buffer_donor" in text or "tf.aliasing_output" in text


def test_generation_programs_lower_and_the_compiled_train_step_runs(runtime):
    """Prefill + decode lower for a generating eval; the train program compiled from its
    abstract arguments runs on real arrays of those shapes."""
    shape = programs.GenerationShape(batch_size=8, prompt_len=16, max_new_tokens=8)
    listed = programs.run_programs(TINY, DATA, SelectionConfig(), OptimizerConfig(), None,
                                   runtime, generation=shape)
    assert [p.name for p in listed] == ["train_step", "eval_step", "generate_prefill",
                                        "generate_decode"]
    with runtime.activate():
        for p in listed[2:]:
            p.lower()
        train = listed[0]
        compiled = train.lower().compile()
        state_sds, _, batch_sds = train.args
        state = jax.tree.map(lambda s: jax.device_put(np.zeros(s.shape, s.dtype), s.sharding),
                             state_sds)
        batch = {k: jax.device_put(np.ones(s.shape, s.dtype), s.sharding)
                 for k, s in batch_sds.items()}
        new_state, metrics = compiled(state, None, batch)
    assert int(new_state.step) == 1 and np.isfinite(float(metrics["loss"]))


def test_a_clm_run_over_scored_data_takes_the_stored_losses_with_its_batches(runtime):
    """Runs of any mode can train on a `score` job's tokens (the experiment's CLM student)."""
    from slm_jax.slm.optim import make_optimizer
    tx, schedule = make_optimizer(OptimizerConfig(), 10)
    program = programs.train_program(runtime, TINY, SelectionConfig(), tx, schedule,
                                     batch_size=8, seq_len=32, scored=True)
    assert "ref_loss" in program.args[2]
    with runtime.activate():
        program.lower()
