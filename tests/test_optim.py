"""The optimizer (slm_jax/slm/optim.py): warm-up + cosine schedule, clipping, no decay on norms."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from slm_jax.cli_errors import with_flags
from slm_jax.slm.optim import OptimizerConfig, make_optimizer, make_schedule


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_the_end_ratio():
    config = OptimizerConfig(learning_rate=1e-3, warmup_steps=10, end_lr_ratio=0.1)
    schedule = make_schedule(config, 110)
    assert float(schedule(0)) == 0.0
    np.testing.assert_allclose(float(schedule(5)), 5e-4, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(10)), 1e-3, rtol=1e-6)
    # cosine over the 100 steps after warm-up, from 1e-3 to 1e-4
    mid = 1e-4 + (1e-3 - 1e-4) * 0.5 * (1 + np.cos(np.pi * 0.5))
    np.testing.assert_allclose(float(schedule(60)), mid, rtol=1e-5)
    np.testing.assert_allclose(float(schedule(110)), 1e-4, rtol=1e-5)


def test_no_warmup_starts_at_the_peak():
    schedule = make_schedule(OptimizerConfig(learning_rate=2e-4), 5)
    np.testing.assert_allclose(float(schedule(0)), 2e-4, rtol=1e-6)


def test_gradients_are_clipped_and_norm_scales_are_not_decayed():
    config = OptimizerConfig(learning_rate=1.0, weight_decay=0.5, clip_norm=1.0)
    tx, _ = make_optimizer(config, 10)
    params = {"w": jnp.ones((2, 2)), "scale": jnp.ones((2,))}
    state = tx.init(params)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, state, params)
    # Zero gradients: the matrix decays (lr * wd * p), the 1-D norm scale does not.
    np.testing.assert_allclose(np.asarray(updates["w"]), -0.5 * np.ones((2, 2)), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(updates["scale"]), np.zeros(2), atol=0)
    # The clipped gradient feeds Adam's moments: a 1e6 gradient leaves a first moment of
    # (1 - b1) * (gradient clipped to global norm 1).
    huge = {"w": jnp.full((2, 2), 1e6), "scale": jnp.full((2,), 1e6)}
    _, state = tx.update(huge, state, params)
    mu = state[1][0].mu
    assert float(optax.global_norm(mu)) == pytest.approx((1 - config.b1) * 1.0, rel=1e-5)


def test_bad_values_name_the_binding():
    with pytest.raises(ValueError, match="; set OptimizerConfig.learning_rate") as error:
        OptimizerConfig(learning_rate=0.0)
    assert "; set --gin.OptimizerConfig.learning_rate" in with_flags(str(error.value), "--gin.")
    with pytest.raises(ValueError, match=r"end_lr_ratio=2.0 must be a finite number in \[0.0, 1.0\]"):
        OptimizerConfig(end_lr_ratio=2.0)
    with pytest.raises(ValueError, match="learning_rate=nan must be a finite number"):
        OptimizerConfig(learning_rate=float("nan"))
    with pytest.raises(ValueError, match="clip_norm='1' must be a finite number"):
        OptimizerConfig(clip_norm="1")
    with pytest.raises(ValueError, match="warmup_steps=2.5 must be an int >= 0"):
        OptimizerConfig(warmup_steps=2.5)
