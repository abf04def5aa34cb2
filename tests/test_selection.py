"""select_tokens against an independent numpy implementation."""

import fractions
import math
import zlib

import jax
import numpy as np
import pytest

from slm_jax.slm.selection import SelectionConfig, select_tokens


def numpy_select(excess, weights, ratio, scope):
    """Reference: stable sort by (-excess, flat index) over valid positions."""
    def one_scope(e, w):
        mask = np.zeros(e.shape, np.float32)
        valid = np.flatnonzero(w > 0)
        n = len(valid)
        if n == 0:
            return mask
        # Exact rational arithmetic: 0.7 * 45 + 0.5 is 32, not float64's 31.99...
        m = max(1, math.floor(fractions.Fraction(str(ratio)) * n + fractions.Fraction(1, 2)))
        # np.lexsort sorts by the last key first: excess descending, then index.
        order = np.lexsort((valid, -e[valid].astype(np.float64)))
        mask[valid[order[:m]]] = 1.0
        return mask

    if scope == "batch":
        return one_scope(excess.reshape(-1), weights.reshape(-1)).reshape(excess.shape)
    return np.stack([one_scope(e, w) for e, w in zip(excess, weights)])


def random_case(rng, batch, length, *, tie_levels=None, pad_rate=0.2):
    if tie_levels:
        excess = rng.integers(0, tie_levels, size=(batch, length)).astype(np.float32)
    else:
        excess = rng.normal(size=(batch, length)).astype(np.float32)
    weights = (rng.random((batch, length)) > pad_rate).astype(np.float32)
    # A padded tail, as packing leaves at the end of rows.
    weights[0, length // 2:] = 0.0
    return excess, weights


EXACT_METHODS = ["bisect", "top_k", "sort"]


@pytest.mark.parametrize("method", EXACT_METHODS)
@pytest.mark.parametrize("scope", ["batch", "sequence"])
@pytest.mark.parametrize("ratio", [0.05, 0.3, 0.5, 0.6, 0.7, 0.999, 1.0])
@pytest.mark.parametrize("tie_levels", [None, 3])
def test_matches_numpy(scope, ratio, tie_levels, method):
    # crc32, not hash(): str hashes change with PYTHONHASHSEED between runs.
    rng = np.random.default_rng(zlib.crc32(repr((scope, ratio, tie_levels)).encode()))
    for batch, length in [(4, 16), (3, 37), (1, 5)]:
        excess, weights = random_case(rng, batch, length, tie_levels=tie_levels)
        got = np.asarray(jax.jit(select_tokens, static_argnums=(2, 3, 4))(
            excess, weights, ratio, scope, method))
        want = numpy_select(excess, weights, ratio, scope)
        np.testing.assert_array_equal(got, want)
        assert got.dtype == np.float32


@pytest.mark.parametrize("method", EXACT_METHODS)
def test_ties_go_to_lower_index_over_many_cases(method):
    # Many ties at the threshold, and n where ratio * n + 0.5 is an integer in
    # exact arithmetic but not in float (0.7 * 45 + 0.5).
    select = jax.jit(select_tokens, static_argnums=(2, 3, 4))
    for seed in range(40):
        rng = np.random.default_rng(seed)
        excess, weights = random_case(rng, 4, 16, tie_levels=3)
        for scope in ("batch", "sequence"):
            np.testing.assert_array_equal(
                    np.asarray(select(excess, weights, 0.7, scope, method)),
                    numpy_select(excess, weights, 0.7, scope))


def test_selected_count_and_never_padding():
    rng = np.random.default_rng(0)
    excess, weights = random_case(rng, 8, 64)
    excess[weights == 0] = 1e9  # padding with huge excess must still be ignored
    mask = np.asarray(select_tokens(excess, weights, 0.6))
    n = int(weights.sum())
    assert mask.sum() == math.floor(0.6 * n + 0.5)
    assert not np.any(mask[weights == 0])


@pytest.mark.parametrize("method", EXACT_METHODS)
def test_valid_minus_inf_is_still_preferred_over_padding(method):
    excess = np.array([[np.inf, -np.inf, -np.inf, 0.0]], np.float32)
    weights = np.array([[0, 1, 1, 0]], np.float32)
    mask = np.asarray(select_tokens(excess, weights, 1.0, method=method))
    np.testing.assert_array_equal(mask, [[0, 1, 1, 0]])


def test_at_least_one_and_empty_rows():
    excess = np.zeros((2, 8), np.float32)
    weights = np.zeros((2, 8), np.float32)
    weights[0, 3] = 1.0
    mask = np.asarray(select_tokens(excess, weights, 0.01, "sequence"))
    np.testing.assert_array_equal(mask[0], weights[0])
    np.testing.assert_array_equal(mask[1], 0.0)


def test_ratio_one_selects_every_valid_token():
    rng = np.random.default_rng(1)
    excess, weights = random_case(rng, 4, 32)
    for scope in ["batch", "sequence"]:
        np.testing.assert_array_equal(select_tokens(excess, weights, 1.0, scope), weights)


def test_batch_scope_ranks_across_rows():
    excess = np.array([[5.0, 4.0], [1.0, 0.0]], np.float32)
    weights = np.ones_like(excess)
    np.testing.assert_array_equal(select_tokens(excess, weights, 0.5, "batch"), [[1, 1], [0, 0]])
    np.testing.assert_array_equal(select_tokens(excess, weights, 0.5, "sequence"), [[1, 0], [1, 0]])


@pytest.mark.parametrize("ratio", [0.0, 1.5, -0.1, float("nan")])
def test_bad_ratio_is_a_clear_error(ratio):
    with pytest.raises(ValueError, match=r"SelectionConfig.ratio=.*must be in \(0, 1\]"):
        SelectionConfig(mode="slm", ratio=ratio)
    with pytest.raises(ValueError, match="must be in"):
        select_tokens(np.zeros((1, 2)), np.ones((1, 2)), ratio)


def test_bad_scope_and_mode_are_clear_errors():
    with pytest.raises(ValueError, match="SelectionConfig.scope='row'"):
        SelectionConfig(mode="slm", ratio=0.6, scope="row")
    with pytest.raises(ValueError, match="SelectionConfig.mode='rho'"):
        SelectionConfig(mode="rho", ratio=0.6)


def test_bisect_orders_signed_values_and_infinities():
    excess = np.array([[-3.5, 2.0, -0.0, 0.0, np.inf, -1e-30, 1e-30, -np.inf]], np.float32)
    weights = np.ones_like(excess)
    for ratio in (0.125, 0.25, 0.5, 0.75, 1.0):
        np.testing.assert_array_equal(
                np.asarray(select_tokens(excess, weights, ratio, method="bisect")),
                numpy_select(excess, weights, ratio, "batch"))


def test_approx_keeps_about_m_and_needs_its_name():
    rng = np.random.default_rng(1)
    excess, weights = random_case(rng, 8, 256)
    mask = np.asarray(select_tokens(excess, weights, 0.6, method="approx"))
    m = math.floor(0.6 * weights.sum() + 0.5)
    assert abs(mask.sum() - m) <= 0.05 * m
    assert not np.any(mask[weights == 0])
    assert SelectionConfig().method == "bisect"
    with pytest.raises(ValueError, match="SelectionConfig.method"):
        SelectionConfig(mode="slm", ratio=0.6, method="heap")
