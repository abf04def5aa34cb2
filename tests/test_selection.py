"""select_tokens against an independent numpy implementation."""

import fractions
import math
import zlib

import jax
import numpy as np
import pytest

from slm_jax.cli_errors import with_flags
from slm_jax.slm.selection import SelectionConfig, select_tokens, selection_score


def numpy_budget(ratio, n):
    """m = floor(ratio * n + 1/2), at least 1, in exact rational arithmetic."""
    # 0.7 * 45 + 0.5 is 32, not float64's 31.99...
    return max(1, math.floor(fractions.Fraction(str(ratio)) * n + fractions.Fraction(1, 2)))


def numpy_select(excess, weights, ratio, scope):
    """Reference: stable sort by (-excess, flat index) over valid positions."""
    def one_scope(e, w):
        mask = np.zeros(e.shape, np.float32)
        valid = np.flatnonzero(w > 0)
        n = len(valid)
        if n == 0:
            return mask
        m = numpy_budget(ratio, n)
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


# --- scope "document" and SelectionConfig.score ------------------------------------------


def numpy_documents(segment_ids):
    """(row, start, end) of every run of equal nonzero segment ids, in row-major order."""
    docs = []
    for row, seg in enumerate(segment_ids):
        start = 0
        for t in range(1, len(seg) + 1):
            if t == len(seg) or seg[t] != seg[start]:
                if seg[start] != 0:
                    docs.append((row, start, t))
                start = t
    return docs


def numpy_select_documents(score, weights, segment_ids, ratio):
    """Reference: documents by mean score over their weighted tokens, descending (equal
    means: earlier document first); a document is kept while fewer than m weighted
    tokens were kept before it, so the one that reaches or crosses m is kept whole."""
    mask = np.zeros(score.shape, np.float32)
    big = np.float64(np.finfo(np.float32).max)
    ranked = []
    for index, (row, start, end) in enumerate(numpy_documents(segment_ids)):
        valid = weights[row, start:end] > 0
        if valid.any():
            mean = np.clip(score[row, start:end][valid].astype(np.float64), -big, big).mean()
            ranked.append((-mean, index, row, start, end, valid))
    n = sum(int(valid.sum()) for *_, valid in ranked)
    if n == 0:
        return mask
    m, kept = numpy_budget(ratio, n), 0
    for _, _, row, start, end, valid in sorted(ranked, key=lambda r: r[:2]):
        if kept >= m:
            break
        mask[row, start:end] = valid
        kept += int(valid.sum())
    return mask


def random_documents(rng, batch, length, *, tie_levels=None, drop_rate=0.1):
    """Rows packed with 1-4 documents and a padded tail; weights as the pipeline sets them
    (0 on each document's last position, where the target is the next document), plus a
    few extra zeros."""
    segments = np.zeros((batch, length), np.int32)
    for row in range(batch):
        end = rng.integers(length // 2, length + 1)
        cuts = np.sort(rng.choice(np.arange(1, end), size=min(rng.integers(0, 4), end - 1),
                                  replace=False))
        for doc, (a, b) in enumerate(zip(np.r_[0, cuts], np.r_[cuts, end])):
            segments[row, a:b] = doc + 1
    nxt = np.concatenate([segments[:, 1:], np.zeros((batch, 1), np.int32)], axis=1)
    weights = ((segments == nxt) & (segments > 0) & (rng.random((batch, length)) > drop_rate))
    if tie_levels:
        score = rng.integers(0, tie_levels, size=(batch, length)).astype(np.float32)
    else:
        score = rng.normal(size=(batch, length)).astype(np.float32)
    return score, weights.astype(np.float32), segments


DOCUMENT_METHODS = ["bisect", "sort"]
select_jit = jax.jit(select_tokens, static_argnums=(2, 3, 4))


@pytest.mark.parametrize("method", DOCUMENT_METHODS)
@pytest.mark.parametrize("ratio", [0.05, 0.3, 0.7, 0.999, 1.0])
@pytest.mark.parametrize("tie_levels", [None, 2])
def test_document_scope_matches_numpy(ratio, tie_levels, method):
    rng = np.random.default_rng(zlib.crc32(repr(("document", ratio, tie_levels)).encode()))
    for batch, length in [(3, 37), (1, 5), (6, 24)]:
        for _ in range(3):
            score, weights, segments = random_documents(rng, batch, length, tie_levels=tie_levels)
            got = np.asarray(select_jit(score, weights, ratio, "document", method, segments))
            np.testing.assert_array_equal(
                    got, numpy_select_documents(score, weights, segments, ratio))


@pytest.mark.parametrize("method", DOCUMENT_METHODS)
def test_document_that_crosses_the_budget_is_kept_whole(method):
    # Documents: A (3 weighted tokens, mean 5), B (4, mean 3), C in row 1 (2, mean 1); n = 9.
    score = np.array([[5, 5, 5, 0, 3, 3, 3, 3, 9], [1, 1, 9, 0, 0, 0, 0, 0, 0]], np.float32)
    segments = np.array([[1, 1, 1, 1, 2, 2, 2, 2, 2], [1, 1, 1, 0, 0, 0, 0, 0, 0]])
    weights = np.array([[1, 1, 1, 0, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0, 0, 0, 0]], np.float32)
    a = np.array([[1, 1, 1, 0, 0, 0, 0, 0, 0], [0] * 9], np.float32)
    b = np.array([[0, 0, 0, 0, 1, 1, 1, 1, 0], [0] * 9], np.float32)
    select = lambda ratio: np.asarray(select_tokens(score, weights, ratio, "document", method,
                                                    segments))
    np.testing.assert_array_equal(select(0.3), a)        # m = 3: A fills it exactly
    np.testing.assert_array_equal(select(0.5), a + b)    # m = 5: B crosses it, kept: 7 tokens
    np.testing.assert_array_equal(select(0.1), a)        # m = 1: A alone overshoots, kept
    np.testing.assert_array_equal(select(1.0), weights)  # every document


@pytest.mark.parametrize("method", DOCUMENT_METHODS)
def test_documents_are_runs_and_equal_means_go_to_the_earlier_one(method):
    # Row 0 holds segment 1 twice: two documents. All four documents have mean 2.
    score = np.full((2, 6), 2.0, np.float32)
    segments = np.array([[1, 1, 2, 2, 1, 1], [3, 3, 3, 0, 0, 0]])
    weights = (segments > 0).astype(np.float32)
    for ratio, kept in [(0.2, 2), (0.4, 4), (0.7, 6), (0.8, 9)]:
        mask = np.asarray(select_tokens(score, weights, ratio, "document", method, segments))
        np.testing.assert_array_equal(mask.reshape(-1)[:kept], weights.reshape(-1)[:kept])
        assert mask.sum() == kept
        np.testing.assert_array_equal(
                mask, numpy_select_documents(score, weights, segments, ratio))


@pytest.mark.parametrize("method", DOCUMENT_METHODS)
def test_document_scope_ignores_padding_and_survives_infinities(method):
    score = np.array([[np.inf, -np.inf, 1.0, 1e9, 1e9, -2.0, -2.0]], np.float32)
    segments = np.array([[1, 1, 1, 0, 0, 2, 2]])
    weights = np.array([[1, 1, 1, 1, 1, 1, 1]], np.float32)  # padding weighted on purpose
    mask = np.asarray(select_tokens(score, weights, 0.3, "document", method, segments))
    np.testing.assert_array_equal(mask, [[1, 1, 1, 0, 0, 0, 0]])  # m = 2 of n = 5
    empty = np.asarray(select_tokens(score, np.zeros_like(weights), 0.5, "document", method,
                                     segments))
    assert not empty.any()


def test_document_scope_needs_segment_ids_and_a_fitting_method():
    with pytest.raises(ValueError, match="segment_ids"):
        select_tokens(np.zeros((1, 4)), np.ones((1, 4)), 0.5, "document")
    with pytest.raises(ValueError, match="does not apply to scope 'document'"):
        select_tokens(np.zeros((1, 4)), np.ones((1, 4)), 0.5, "document", "top_k",
                      np.ones((1, 4), np.int32))
    with pytest.raises(ValueError, match="; set SelectionConfig.method='bisect' or 'sort'") as e:
        SelectionConfig(mode="slm", ratio=0.6, scope="document", method="approx")
    assert "set --gin.SelectionConfig.method='bisect' or 'sort'" in with_flags(str(e.value),
                                                                              "--gin.")
    assert SelectionConfig(mode="slm", ratio=0.6, scope="document").method == "bisect"


NUMPY_SCORES = {"excess": lambda student, ref: student - ref,
                "student": lambda student, ref: student,
                "reference": lambda student, ref: -ref}


@pytest.mark.parametrize("score", sorted(NUMPY_SCORES))
@pytest.mark.parametrize("scope", ["batch", "sequence", "document"])
def test_each_score_selects_as_numpy(score, scope):
    rng = np.random.default_rng(zlib.crc32(repr((score, scope)).encode()))
    _, weights, segments = random_documents(rng, 5, 32)
    student = rng.gamma(2.0, size=weights.shape).astype(np.float32)
    ref = rng.gamma(2.0, size=weights.shape).astype(np.float32)
    score_BT = np.asarray(selection_score(score, student, ref))
    np.testing.assert_array_equal(score_BT, NUMPY_SCORES[score](student, ref))
    got = np.asarray(select_tokens(score_BT, weights, 0.4, scope, segment_ids=segments))
    want_score = NUMPY_SCORES[score](student, ref)
    want = (numpy_select_documents(want_score, weights, segments, 0.4) if scope == "document"
            else numpy_select(want_score, weights, 0.4, scope))
    np.testing.assert_array_equal(got, want)


def test_reference_score_keeps_what_the_reference_finds_easy():
    student = np.array([[9.0, 1.0, 2.0, 8.0]], np.float32)
    ref = np.array([[8.5, 0.1, 0.2, 2.0]], np.float32)
    weights = np.ones_like(student)
    keep = lambda s: np.asarray(select_tokens(selection_score(s, student, ref), weights, 0.5))
    np.testing.assert_array_equal(keep("excess"), [[0, 0, 1, 1]])     # 0.5, 0.9, 1.8, 6
    np.testing.assert_array_equal(keep("student"), [[1, 0, 0, 1]])
    np.testing.assert_array_equal(keep("reference"), [[0, 1, 1, 0]])  # lowest reference loss


def test_bad_score_is_a_one_line_error_naming_the_binding():
    with pytest.raises(ValueError) as error:
        SelectionConfig(mode="slm", ratio=0.6, score="loss")
    message = str(error.value).splitlines()[0]  # gin appends the configurable's name below
    assert message.startswith("SelectionConfig.score='loss' is not one of")
    assert "; set --gin.SelectionConfig.score='excess'" in with_flags(message, "--gin.")
    assert all(name in message for name in ("excess", "student", "reference"))
    assert SelectionConfig().score == "excess"
