"""Per-token weights of the objective (slm_jax/slm/weighting.py): hard = Rho-1's mask,
a global threshold, dense/sparse softmax weights, DFT's probability weights; invariant to
sharding (the entropy score too)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.parallel import sharding
from slm_jax.slm.selection import SelectionConfig, select_tokens
from slm_jax.slm.weighting import token_weights
from tests.test_train_step import assert_trees_close, make_batch, run_steps


def inputs(seed=0):
    batch = make_batch(seed)
    rng = np.random.default_rng(seed)
    # bf16-rounded scores: many exact ties, as real excess losses have
    score = jnp.asarray(rng.normal(size=batch["loss_weights"].shape), jnp.bfloat16).astype(
        jnp.float32)
    return score, jnp.asarray(batch["loss_weights"]), jnp.asarray(batch["segment_ids"])


def weights(seed=0, **config):
    score, valid, segments = inputs(seed)
    selection = SelectionConfig(**{"mode": "slm", **config})
    w, norm = jax.jit(lambda s, v, g: token_weights(selection, s, v, g, jnp.exp(-s)))(
        score, valid, segments)
    return np.asarray(w), float(norm), score, valid, segments


@pytest.mark.parametrize("scope", ["batch", "sequence", "document"])
def test_hard_is_the_top_k_mask_and_its_count(scope):
    w, norm, score, valid, segments = weights(ratio=0.6, scope=scope)
    mask = np.asarray(select_tokens(score, valid, 0.6, scope, "bisect", segments))
    np.testing.assert_array_equal(w, mask)
    assert norm == mask.sum()


@pytest.mark.parametrize("scope", ["batch", "sequence"])
def test_sparse_with_uniform_weights_selects_exactly_the_hard_mask(scope):
    hard, *_ = weights(ratio=0.6, scope=scope)
    sparse, norm, *_ = weights(ratio=0.6, scope=scope, weighting="sparse", tau=1e30)
    np.testing.assert_array_equal(sparse, hard)   # tau -> inf: weight 1 on the kept tokens
    assert norm == hard.sum()
    # kappa picks the share on its own
    narrower, _, score, valid, _ = weights(ratio=0.6, scope=scope, weighting="sparse",
                                           tau=1e30, kappa=0.3)
    np.testing.assert_array_equal(narrower, np.asarray(select_tokens(score, valid, 0.3, scope)))


def test_dense_has_mean_one_and_concentrates_on_the_top_tokens_at_small_tau():
    w, norm, score, valid, _ = weights(weighting="dense")
    n = float(np.asarray(valid).sum())
    assert norm == pytest.approx(n, rel=1e-5) and (w[np.asarray(valid) == 0] == 0).all()
    sharp, _, score, valid, _ = weights(weighting="dense", tau=1e-3)
    top = np.asarray(select_tokens(score, valid, 1 / n))   # the single highest score...
    top_value = np.asarray(score)[top > 0][0]
    ties = (np.asarray(score) == top_value) & (np.asarray(valid) > 0)
    assert sharp[ties].sum() == pytest.approx(n, rel=1e-4)   # ...and its ties hold all weight
    # lam interpolates with plain CE: lam = 1 is CLM's uniform weights
    clm, clm_norm, *_ = weights(weighting="dense", lam=1.0)
    np.testing.assert_array_equal(clm, np.asarray(valid))
    assert clm_norm == n


def test_dense_per_sequence_has_mean_one_in_every_row():
    w, _, _, valid, _ = weights(weighting="dense", scope="sequence", tau=0.5)
    np.testing.assert_allclose(w.sum(axis=1), np.asarray(valid).sum(axis=1), rtol=1e-5)


def test_prob_is_the_detached_probability_of_each_valid_token():
    score, valid, segments = inputs()
    loss = jnp.abs(score) * 2
    selection = SelectionConfig(mode="clm", weighting="prob")
    w, norm = token_weights(selection, score, valid, segments, jnp.exp(-loss))
    np.testing.assert_allclose(np.asarray(w), np.exp(-np.asarray(loss)) * np.asarray(valid),
                               rtol=1e-6)
    assert float(norm) == float(np.asarray(valid).sum())
    grad = jax.grad(lambda l: (token_weights(selection, score, valid, segments,
                                             jnp.exp(-l))[0] * l).sum())(loss)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(w), rtol=1e-6)  # w is a constant


@pytest.mark.parametrize("config, says", [
    (dict(mode="slm", weighting="sparse", scope="document"), "scope='batch'"),
    (dict(mode="slm", weighting="dense", tau=0.0), "tau=0.0 must be > 0"),
    (dict(mode="slm", weighting="dense", lam=1.5), "lam=1.5 must be in"),
    (dict(mode="slm", weighting="sparse", kappa=0.0), "kappa=0.0 must be in"),
    (dict(mode="slm", weighting="soft"), "weighting='soft' is not one of")])
def test_a_bad_weighting_is_one_line_naming_the_binding(config, says):
    with pytest.raises(ValueError, match=says):
        SelectionConfig(**config)


def test_a_ranking_weighting_in_clm_mode_is_refused_by_the_mode_check():
    with pytest.raises(ValueError, match="weighting='dense' ranks by the score, which needs "
                                         "the slm modes: set SelectionConfig.mode='slm'"):
        SelectionConfig(mode="clm", weighting="dense").check_mode()
    SelectionConfig(mode="clm", weighting="prob").check_mode()     # DFT needs no reference


@pytest.mark.parametrize("weighting, mode, score", [
    ("dense", "slm", "excess"), ("sparse", "slm", "excess"), ("prob", "clm", "excess"),
    ("hard", "slm", "entropy")])
def test_eight_devices_train_like_one_with_every_weighting(weighting, mode, score):
    selection = SelectionConfig(mode=mode, ratio=0.6, weighting=weighting, tau=0.5,
                                score=score)
    one_state, one_metrics = run_steps(selection, devices=jax.devices()[:1], steps=2)
    many_state, many_metrics = run_steps(selection, sharding.MeshConfig(data=2, fsdp=2,
                                                                        tensor=2), steps=2)
    for a, b in zip(one_metrics, many_metrics):   # the loss, its normaliser and grad norm
        for key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=2e-5, atol=1e-6, err_msg=key)
    # As test_document_scope_on_eight_devices_matches_one_device: Adam's sqrt(v) turns
    # summation-order noise in a near-zero gradient into a ~5e-5 step.
    assert_trees_close(one_state.params, many_state.params, rtol=1e-4, atol=2e-4)


def test_lam_one_trains_exactly_like_clm():
    clm_state, clm_metrics = run_steps(SelectionConfig(mode="clm"), steps=2)
    mixed_state, mixed_metrics = run_steps(
        SelectionConfig(mode="slm", weighting="dense", lam=1.0), steps=2)
    assert_trees_close(clm_state.params, mixed_state.params, rtol=1e-6, atol=1e-7)
    for c, m in zip(clm_metrics, mixed_metrics):
        np.testing.assert_allclose(c["selected_loss"], m["selected_loss"], rtol=1e-6)


def test_a_global_scope_keeps_every_valid_token_at_or_above_the_threshold():
    w, norm, score, valid, _ = weights(ratio=0.6, scope="global", threshold=0.25,
                                       mode="slm_offline")
    expected = (np.asarray(valid) > 0) & (np.asarray(score) >= 0.25)
    np.testing.assert_array_equal(w, expected.astype(np.float32))
    assert norm == expected.sum() and 0 < norm < np.asarray(valid).sum()
    with pytest.raises(ValueError, match="scope='global' ranks against the scored corpus's "
                                         "sketch: set SelectionConfig.mode='slm_offline'"):
        SelectionConfig(mode="slm", scope="global").check_mode()
    with pytest.raises(ValueError, match="scope='global' keeps tokens above a corpus threshold"):
        SelectionConfig(mode="slm_offline", scope="global", weighting="dense")
