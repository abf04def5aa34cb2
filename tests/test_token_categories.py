"""Rho-1 §2.1 token categories (slm_jax/analysis/token_categories.py) against brute force."""


import numpy as np
import pytest

from slm_jax.analysis.token_categories import CATEGORIES, classify_tokens


# --------------------------------------------------------------------------
# Token categories.


def brute_force_labels(loss_CN, threshold):
    x = np.arange(loss_CN.shape[0])
    mean_final = loss_CN[-1].mean()
    labels = []
    for n in range(loss_CN.shape[1]):
        slope = np.polyfit(x, loss_CN[:, n], 1)[0]
        if slope < -threshold:
            labels.append("H→L")
        elif slope > threshold:
            labels.append("L→H")
        elif loss_CN[-1, n] < mean_final:
            labels.append("L→L")
        else:
            labels.append("H→H")
    return labels


@pytest.mark.parametrize("num_checkpoints", [2, 3, 7])
def test_classification_matches_brute_force(num_checkpoints):
    rng = np.random.default_rng(num_checkpoints)
    start_N = rng.uniform(0, 8, 400)
    trend_N = rng.normal(0, 0.4, 400)
    loss_CN = (start_N + np.outer(np.arange(num_checkpoints), trend_N)
               + rng.normal(0, 0.1, (num_checkpoints, 400)))
    got = classify_tokens(loss_CN)
    assert [CATEGORIES[i] for i in got.labels_N] == brute_force_labels(loss_CN, 0.2)
    np.testing.assert_allclose(got.slopes_N, [np.polyfit(np.arange(num_checkpoints), y, 1)[0]
                                              for y in loss_CN.T], atol=1e-9)
    assert sum(got.counts.values()) == 400
    assert sum(got.shares.values()) == pytest.approx(1.0)


def test_hand_made_example_hits_all_four_categories():
    loss_CN = np.array([[5.0, 1.0, 0.5, 6.0],
                        [3.0, 2.0, 0.5, 6.0],
                        [1.0, 3.0, 0.5, 6.1]])   # mean final loss 2.65
    got = classify_tokens(loss_CN)
    assert [CATEGORIES[i] for i in got.labels_N] == ["H→L", "L→H", "L→L", "H→H"]
    assert got.counts == {"H→H": 1, "L→H": 1, "H→L": 1, "L→L": 1}
    assert got.shares == {name: 0.25 for name in CATEGORIES}
    assert got.mean_final_loss == pytest.approx(2.65)


def test_slope_at_the_threshold_is_not_a_trend():
    # Slope exactly 0.5 (representable): flat, then H→H/L→L by final loss.
    got = classify_tokens(np.array([[0.0, 4.0], [0.5, 4.0]]), slope_threshold=0.5)
    assert [CATEGORIES[i] for i in got.labels_N] == ["L→L", "H→H"]


# --------------------------------------------------------------------------
# The HTML page.


# --------------------------------------------------------------------------
# The job, end to end on a tiny run.


