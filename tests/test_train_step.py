"""The jitted SLM step: CLM equivalence, sharding invariance, accumulation, overfit, resume."""

import dataclasses
import functools

import jax
import numpy as np
import pytest

from slm_jax import model as model_lib
from slm_jax.parallel import partition, sharding
from slm_jax.slm.optim import OptimizerConfig, make_optimizer
from slm_jax.slm.reference import ReferenceConfig
from slm_jax.slm.selection import SelectionConfig
from slm_jax.slm.train_step import init_train_state, make_loss_fn, make_train_step
from tests.test_selection import numpy_select, numpy_select_documents

TINY = model_lib.ModelConfig(vocab_size=128, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                             mlp_dim=64, max_seq_len=64, dtype="float32", loss_chunk_size=8)
BATCH, LENGTH = 8, 16


def make_batch(seed=0, batch=BATCH, length=LENGTH):
    """Two packed documents per row plus a padded tail, as the pipeline yields."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, TINY.vocab_size, size=(batch, length + 1)).astype(np.int32)
    segments = np.zeros((batch, length + 1), np.int32)
    positions = np.zeros((batch, length + 1), np.int32)
    for row in range(batch):
        cut, end = rng.integers(3, length - 4), rng.integers(length - 2, length + 1)
        segments[row, :cut], segments[row, cut:end] = 1, 2
        positions[row, :cut] = np.arange(cut)
        positions[row, cut:end] = np.arange(end - cut)
    tokens[segments == 0] = 0
    weights = ((segments[:, 1:] == segments[:, :-1]) & (segments[:, 1:] > 0)).astype(np.float32)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_weights": weights,
            "segment_ids": segments[:, :-1], "positions": positions[:, :-1]}


def run_steps(selection, mesh_config=sharding.MeshConfig(), *, devices=None, steps=1,
              grad_accum=1, batches=None, config=TINY, lr=1e-2):
    """Runs `steps` sharded steps; returns (final state on host, list of metrics)."""
    mesh = sharding.make_mesh(mesh_config, devices)
    tx, schedule = make_optimizer(OptimizerConfig(learning_rate=lr, warmup_steps=0), 100)
    state_sh = partition.state_shardings(config, tx, mesh)
    ref_sh = sharding.param_shardings(config, mesh) if selection.mode == "slm" else None
    with sharding.activation_sharding(mesh, mesh_config.rules):
        state = partition.init_state(config, tx, jax.random.key(0), state_sh)
        ref_params = None
        if selection.mode == "slm":
            ref_params = jax.device_put(model_lib.init_params(config, jax.random.key(7)), ref_sh)
        step = partition.jit_train_step(
            make_train_step(dataclasses.replace(config, loss_chunk_size=8), selection, tx,
                            schedule, grad_accum=grad_accum), state_sh, ref_sh, mesh)
        metrics = []
        for i in range(steps):
            batch = batches[i % len(batches)] if batches else make_batch(i)
            state, m = step(state, ref_params, batch)
            metrics.append(jax.device_get(m))
    return jax.device_get(state), metrics


def assert_trees_close(a, b, **tol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)


def test_slm_at_ratio_one_is_exactly_clm():
    clm_state, clm_metrics = run_steps(SelectionConfig(mode="clm"), steps=2)
    slm_state, slm_metrics = run_steps(SelectionConfig(mode="slm", ratio=1.0), steps=2)
    for x, y in zip(jax.tree.leaves(clm_state.params), jax.tree.leaves(slm_state.params)):
        np.testing.assert_array_equal(x, y)
    for c, s in zip(clm_metrics, slm_metrics):
        assert c["loss"] == s["loss"] and c["selected_loss"] == s["selected_loss"]
        assert s["selected_frac"] == 1.0


def test_slm_selects_the_ratio_and_reports_metrics():
    _, (m,) = run_steps(SelectionConfig(mode="slm", ratio=0.6))
    n_tokens = float(make_batch(0)["loss_weights"].sum())
    assert m["tokens"] == n_tokens
    assert m["selected_frac"] == pytest.approx(np.floor(0.6 * n_tokens + 0.5) / n_tokens)
    # The kept tokens are those the student finds hardest relative to the reference.
    assert m["selected_loss"] > m["loss"] - 1e-3
    for key in ["loss", "selected_loss", "ref_loss", "excess_loss", "grad_norm", "lr"]:
        assert np.isfinite(m[key]), key
    np.testing.assert_allclose(m["excess_loss"], m["loss"] - m["ref_loss"], atol=1e-5)


@functools.cache
def one_device_run(selection):
    return run_steps(selection, devices=jax.devices()[:1], steps=2)


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1), (2, 2, 2)])
@pytest.mark.parametrize("mode", ["clm", "slm"])
def test_eight_devices_match_one_device(shape, mode):
    assert jax.device_count() == 8, "conftest sets 8 CPU devices"
    selection = SelectionConfig(mode=mode, ratio=0.6 if mode == "slm" else 1.0)
    one_state, one_metrics = one_device_run(selection)
    mesh_config = sharding.MeshConfig(data=shape[0], fsdp=shape[1], tensor=shape[2])
    many_state, many_metrics = run_steps(selection, mesh_config, steps=2)
    for a, b in zip(one_metrics, many_metrics):
        for key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=2e-5, atol=1e-6, err_msg=key)
    # Adam divides by sqrt(v): tiny gradients turn summation-order noise into ~1e-6 steps.
    assert_trees_close(one_state.params, many_state.params, rtol=1e-4, atol=2e-5)


def test_params_are_really_sharded():
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, tensor=2))
    tx, _ = make_optimizer(OptimizerConfig(), 10)
    state_sh = partition.state_shardings(TINY, tx, mesh)
    mlp_kernels = [s for path, s in jax.tree_util.tree_leaves_with_path(state_sh.params)
                   if len(s.spec) == 2 and "fsdp" in s.spec and "tensor" in s.spec]
    assert mlp_kernels, "2-D kernels should be split over fsdp and tensor"


def test_grad_accumulation_matches_one_big_batch_for_clm():
    batches = [make_batch(0, batch=8)]
    one, m1 = run_steps(SelectionConfig(mode="clm"), batches=batches)
    acc, m2 = run_steps(SelectionConfig(mode="clm"), batches=batches, grad_accum=4)
    np.testing.assert_allclose(m1[0]["loss"], m2[0]["loss"], rtol=1e-5)
    np.testing.assert_allclose(m1[0]["grad_norm"], m2[0]["grad_norm"], rtol=1e-4)
    assert_trees_close(one.params, acc.params, rtol=1e-4, atol=2e-5)


def test_tiny_model_overfits_one_batch():
    batches = [make_batch(3)]
    _, metrics = run_steps(SelectionConfig(mode="slm", ratio=0.6), batches=batches, steps=40)
    assert metrics[-1]["loss"] < 0.5 * metrics[0]["loss"]


NUMPY_SCORES = {"excess": lambda loss, ref: loss - ref, "student": lambda loss, ref: loss,
                "reference": lambda loss, ref: -ref}


def numpy_mask(score_BT, batch, ratio, scope):
    if scope == "document":
        return numpy_select_documents(score_BT, batch["loss_weights"], batch["segment_ids"], ratio)
    return numpy_select(score_BT, batch["loss_weights"], ratio, scope)


@pytest.mark.parametrize("mode,score,scope,grad_accum", [
    ("slm", "excess", "document", 1), ("slm", "student", "batch", 1),
    ("slm", "reference", "sequence", 1), ("slm_offline", "reference", "document", 2),
    ("slm_offline", "entropy", "batch", 2)])
def test_step_selects_by_score_and_scope_as_numpy(mode, score, scope, grad_accum):
    selection = SelectionConfig(mode=mode, ratio=0.4, scope=scope, score=score)
    batch = make_batch(5)
    tx, schedule = make_optimizer(OptimizerConfig(learning_rate=1e-2, warmup_steps=0), 100)
    state = init_train_state(TINY, tx, jax.random.key(0))
    ref_params = model_lib.init_params(TINY, jax.random.key(7))
    loss_fn = jax.jit(make_loss_fn(TINY))
    loss_BT = np.asarray(loss_fn(state.params, batch))
    if mode == "slm":
        ref_BT = np.asarray(loss_fn(ref_params, batch))
    else:
        ref_BT = np.random.default_rng(1).gamma(2.0, size=loss_BT.shape).astype(np.float32)
        batch = {**batch, "ref_loss": ref_BT}
    if score == "entropy":   # ESLM: the student's predictive entropy (tests/test_losses.py)
        score_BT = np.asarray(jax.jit(make_loss_fn(TINY, with_entropy=True))(
            state.params, batch)[1])
    else:
        score_BT = NUMPY_SCORES[score](loss_BT, ref_BT)
    # Micro-batch a holds rows a, a + A, ... and ranks its own tokens.
    mask_BT = np.zeros_like(loss_BT)
    for a in range(grad_accum):
        rows = {k: v[a::grad_accum] for k, v in batch.items()}
        mask_BT[a::grad_accum] = numpy_mask(score_BT[a::grad_accum], rows, 0.4, scope)

    step = jax.jit(make_train_step(TINY, selection, tx, schedule, grad_accum=grad_accum))
    _, m = jax.device_get(step(state, ref_params if mode == "slm" else None, batch))
    weights_BT = batch["loss_weights"]
    assert m["selected_frac"] == pytest.approx(mask_BT.sum() / weights_BT.sum(), rel=1e-6)
    np.testing.assert_allclose(m["selected_loss"], (mask_BT * loss_BT).sum() / mask_BT.sum(),
                               rtol=1e-5)
    # The metrics do not depend on what is ranked.
    assert set(m) == {"loss", "selected_loss", "selected_frac", "tokens", "grad_norm", "skipped",
                      "lr", "ref_loss", "excess_loss"}
    np.testing.assert_allclose(m["ref_loss"], (weights_BT * ref_BT).sum() / weights_BT.sum(),
                               rtol=1e-5)


def test_document_scope_on_eight_devices_matches_one_device():
    selection = SelectionConfig(mode="slm", ratio=0.6, scope="document")
    one_state, one_metrics = one_device_run(selection)
    many_state, many_metrics = run_steps(selection, sharding.MeshConfig(data=2, fsdp=2, tensor=2),
                                         steps=2)
    for a, b in zip(one_metrics, many_metrics):
        assert a["selected_frac"] == b["selected_frac"]  # the same documents, to the token
        for key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=2e-5, atol=1e-6, err_msg=key)
    # Looser than test_eight_devices_match_one_device: with fewer tokens kept, Adam's
    # sqrt(v) turns summation-order noise in a near-zero gradient into a ~6e-5 step.
    assert_trees_close(one_state.params, many_state.params, rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize("source", ["ema", "snapshot"])
def test_a_self_reference_lives_in_the_state_and_follows_the_params(source):
    """ssToken's reference: the step's reference forward reads state.ref_params (so the
    first step's excess loss is 0 up to fusion: the reference is the initial student), and the
    step updates it from the new params: an EMA every step, a snapshot every N-th."""
    self_ref = ReferenceConfig(source=source, ema_decay=0.5, snapshot_every=2,
                               dtype="float32").self_reference()
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=4))
    tx, schedule = make_optimizer(OptimizerConfig(learning_rate=1e-2, warmup_steps=0), 100)
    state_sh = partition.state_shardings(TINY, tx, mesh, self_reference=self_ref)
    step = partition.jit_train_step(
        make_train_step(TINY, SelectionConfig(mode="slm", ratio=0.5), tx, schedule,
                        reference_model_config=TINY, self_reference=self_ref),
        state_sh, None, mesh)
    with sharding.activation_sharding(mesh):
        state = partition.init_state(TINY, tx, jax.random.key(0), state_sh, self_ref)
        assert state.ref_params["embed"]["embedding"].sharding == \
            state_sh.params["embed"]["embedding"]
        history = [jax.device_get(state.params)]
        for i in range(2):
            state, m = step(state, None, make_batch(i))
            history.append(jax.device_get(state.params))
            if i == 0:
                assert abs(float(m["excess_loss"])) < 1e-6 and float(m["ref_loss"]) > 1.0
    p0, p1, p2 = history
    if source == "ema":   # ref = 0.5 * (0.5 * p0 + 0.5 * p1) + 0.5 * p2
        expected = jax.tree.map(lambda a, b, c: 0.25 * a + 0.25 * b + 0.5 * c, p0, p1, p2)
        assert_trees_close(jax.device_get(state.ref_params), expected, rtol=1e-5, atol=1e-6)
    else:                 # the snapshot after step 2 is p2, exactly
        assert_trees_close(jax.device_get(state.ref_params), p2, rtol=0, atol=0)
