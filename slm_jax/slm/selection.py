"""Step 3 of SLM: keep the tokens with the largest excess loss.

The reference model (step 1) and the student both score every token; the
student then trains only on the top `ratio` share of tokens ranked by

        excess_loss = student_loss - reference_loss

Rho-1 ranks the tokens of a whole batch together (`scope="batch"`). The
ablations: rank each row alone (`scope="sequence"`); keep whole documents by
their mean score (`scope="document"`, token- vs document-level selection);
rank by the student's loss alone or by the reference's (`SelectionConfig.score`).
"""

from __future__ import annotations

import dataclasses
import fractions
import math

import gin
import jax
import jax.numpy as jnp

SCOPES = ("batch", "sequence", "document")
# SelectionConfig's scopes: select_tokens' and "global", a fixed corpus-level threshold.
CONFIG_SCOPES = SCOPES + ("global",)
MODES = ("clm", "slm", "slm_offline")
# What is ranked, highest kept: Rho-1's excess loss, the student's loss alone
# (plain hard-token mining, no reference needed to rank), or the negated
# reference loss (keep what the reference finds easiest, i.e. most "clean").
# "entropy": the student's predictive entropy (ESLM, reference-free).
SCORES = ("excess", "student", "reference", "entropy")
# How the m-th largest excess loss is found. All but "approx" are exact and
# select the same tokens; "approx" (lax.approx_max_k, TPU-friendly) may keep
# slightly more or fewer than m and is only used when asked for by name.
# "bisect" is the default: at a 1M-token batch it is the fastest exact one
# (`python -m slm_jax.bench`, docs/performance.md) and needs no gather.
METHODS = ("bisect", "top_k", "sort", "approx")
# A document budget is a weighted count, which top_k cannot express.
DOCUMENT_METHODS = ("bisect", "sort")
# How the kept tokens are weighted in the objective (slm_jax/slm/weighting.py): Rho-1's
# hard top-k, dense/sparse softmax weights of the score, DFT's detached probability.
WEIGHTINGS = ("hard", "dense", "sparse", "prob")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SelectionConfig:
    """How the student's loss is formed.

    mode: "clm" trains on every token (no reference forward at all);
        "slm" runs the frozen reference in the step and keeps the top tokens;
        "slm_offline" reads the reference's per-token losses stored by the
        `score` job with the batch, so the step runs no reference forward.
    ratio: share of valid tokens kept in the slm modes, in (0, 1].
    scope: "batch" ranks all tokens of the (micro-)batch together, "sequence"
        ranks each row separately, "document" keeps whole documents (runs of
        one segment id in a row) by their mean score, see `select_tokens`;
        "global" (mode "slm_offline") keeps every token whose score is at or above
        the corpus's (1 - ratio) quantile, from the `score` job's sketch
        (slm_jax/data/score_sketch.py): the share kept varies by batch.
    threshold: scope "global"'s score threshold; the train job sets it from
        train.scored_data's sketch (set by hand: a fixed threshold, sketch unread).
    method: how the threshold is found (`METHODS`; see `select_tokens`).
    score: what is ranked, highest kept (`selection_score`): "excess"
        (student - reference loss, Rho-1), "student" (the student's loss),
        "reference" (minus the reference's loss) or "entropy" (the student's
        predictive entropy, ESLM). "student" and "entropy" ignore the
        reference for ranking; in mode "slm" the reference forward still runs
        so that the ref_loss/excess_loss metrics stay the same.
    weighting: how the objective weighs tokens (slm_jax/slm/weighting.py): "hard"
        (Rho-1: the top `ratio` share, weight 1), "dense" (n * softmax(score / tau),
        mixed with plain CE by `lam`), "sparse" (dense weights on the top `kappa`
        share only) or "prob" (DFT: loss times the detached probability, any mode).
    tau: the dense/sparse softmax temperature (1: the score's own scale, as in the
        Token Weighting paper's default).
    lam: dense/sparse interpolation with plain CE, (1 - lam) * w + lam (0: weights only;
        1: CLM).
    kappa: the share sparse keeps; None: `ratio`.
    """

    mode: str = "clm"
    ratio: float = 1.0
    scope: str = "batch"
    method: str = "bisect"
    score: str = "excess"
    weighting: str = "hard"
    tau: float = 1.0
    lam: float = 0.0
    kappa: float | None = None
    threshold: float | None = None

    @property
    def selects(self) -> bool:
        return self.mode != "clm"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(
                    f"SelectionConfig.mode={self.mode!r} is not one of {MODES}; set "
                    "SelectionConfig.mode='clm', 'slm' or 'slm_offline'.")
        if self.scope not in CONFIG_SCOPES:
            raise ValueError(f"SelectionConfig.scope={self.scope!r} is not one of "
                             f"{CONFIG_SCOPES}; set SelectionConfig.scope='batch' (Rho-1).")
        check_selection(self.ratio, "batch" if self.scope == "global" else self.scope,
                        self.method, prefix="SelectionConfig.")
        if self.score not in SCORES:
            raise ValueError(
                    f"SelectionConfig.score={self.score!r} is not one of {SCORES}; set "
                    "SelectionConfig.score='excess' (Rho-1), 'student', 'reference' or "
                    "'entropy'.")
        self._check_weighting()

    def check_mode(self) -> None:
        """What this mode cannot serve (the train job asks before any work; a job that
        builds its own CLM runs passes weighting='hard' for them)."""
        if self.mode == "clm" and self.weighting in ("dense", "sparse"):
            raise ValueError(f"SelectionConfig.weighting={self.weighting!r} ranks by the score, "
                             "which needs the slm modes: set SelectionConfig.mode='slm' or "
                             "'slm_offline' (or SelectionConfig.weighting='prob' for CLM).")
        if self.scope == "global" and self.mode != "slm_offline":
            raise ValueError("SelectionConfig.scope='global' ranks against the scored corpus's "
                             "sketch: set SelectionConfig.mode='slm_offline' and "
                             "train.scored_data (or another SelectionConfig.scope).")

    @property
    def weighs(self) -> bool:
        """Whether the objective weighs tokens (any mode but plain CLM)."""
        return self.selects or self.weighting == "prob"

    def _check_weighting(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"SelectionConfig.weighting={self.weighting!r} is not one of "
                             f"{WEIGHTINGS}; set SelectionConfig.weighting='hard' (Rho-1).")
        if not (isinstance(self.tau, (int, float)) and self.tau > 0):
            raise ValueError(f"SelectionConfig.tau={self.tau!r} must be > 0 (the softmax "
                             "temperature); set SelectionConfig.tau=1.0.")
        if not (isinstance(self.lam, (int, float)) and 0.0 <= self.lam <= 1.0):
            raise ValueError(f"SelectionConfig.lam={self.lam!r} must be in [0, 1]; set "
                             "SelectionConfig.lam=0.0.")
        if self.kappa is not None:
            validate_ratio(self.kappa, "SelectionConfig.kappa")
        if self.scope == "global" and self.weighting != "hard":
            raise ValueError(f"SelectionConfig.scope='global' keeps tokens above a corpus "
                             f"threshold, with weight 1; SelectionConfig.weighting="
                             f"{self.weighting!r} needs SelectionConfig.scope='batch' or "
                             "'sequence'.")
        if self.weighting in ("dense", "sparse"):
            if self.scope == "document":
                raise ValueError(f"SelectionConfig.weighting={self.weighting!r} weighs "
                                 "tokens; set SelectionConfig.scope='batch' or 'sequence'.")


def selection_score(score: str, student_loss, reference_loss, student_entropy=None):
    """The per-token score `select_tokens` ranks (highest kept), per `SCORES`."""
    if score == "excess":
        return student_loss - reference_loss
    if score == "student":
        return student_loss
    if score == "reference":
        return -reference_loss
    if score == "entropy":
        return student_entropy
    raise ValueError(f"score={score!r} is not one of {SCORES}.")


def validate_ratio(ratio: float, binding: str = "ratio") -> None:
    if not (isinstance(ratio, (int, float)) and 0.0 < ratio <= 1.0):
        raise ValueError(
                f"{binding}={ratio!r} must be in (0, 1] (the share of tokens kept, "
                f"e.g. 0.6 for Rho-1 1B); set {binding}=0.6.")


# ratio is read as the nearest fraction p/q with q <= this, so 0.7 is exactly
# 7/10 and m below is exact integer arithmetic that fits int32 for any n:
# float32 (or a fused multiply-add) would put floor(0.7 * 45 + 0.5) at 31 or
# 32 depending on backend.
RATIO_MAX_DENOMINATOR = 10_000


def ratio_fraction(ratio: float) -> fractions.Fraction:
    return fractions.Fraction(ratio).limit_denominator(RATIO_MAX_DENOMINATOR)


def num_selected(num_valid, ratio: float):
    """m = floor(ratio * n + 1/2), at least 1 when n >= 1 (n may be traced)."""
    frac = ratio_fraction(ratio)
    p, q = frac.numerator, frac.denominator
    # n = a*q + r, so ratio*n + 1/2 = p*a + (2*p*r + q) / (2*q), all in int32.
    n = jnp.asarray(num_valid, jnp.int32)
    a, r = n // q, n % q
    m = p * a + (2 * p * r + q) // (2 * q)
    return jnp.where(n >= 1, jnp.maximum(m, 1), 0)


def _sortable_keys(score_N):
    """uint32 keys in the same order as the float32 scores (-inf lowest)."""
    # -0.0 and 0.0 compare equal as floats, so they must share a key.
    score_N = jnp.where(score_N == 0, jnp.float32(0), score_N)
    bits_N = jax.lax.bitcast_convert_type(score_N, jnp.uint32)
    negative_N = (bits_N >> 31).astype(bool)
    return jnp.where(negative_N, ~bits_N, bits_N | jnp.uint32(1 << 31))


def _kth_largest_key(keys_N, m, counts_N=None):
    """The m-th largest key (m >= 1), built bit by bit from the top.

    With counts_N, key i stands for counts_N[i] units: the largest key with
    at least m units at or above it.
    32 passes of a count over the scope: under sharding each is a scalar
    all-reduce, where top_k or a sort first gathers every score.
    """
    def units_at_or_above(candidate):
        at_or_above_N = keys_N >= candidate
        if counts_N is None:
            return at_or_above_N.sum()
        return jnp.where(at_or_above_N, counts_N, 0).sum()

    def set_bit(i, key):
        candidate = key | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
        return jnp.where(units_at_or_above(candidate) >= m, candidate, key)
    return jax.lax.fori_loop(0, 32, set_bit, jnp.uint32(0))


def _above_and_tied(score_N, m, k_max: int, method: str):
    """Positions strictly above the m-th largest score, and those equal to it."""
    last = jnp.clip(m - 1, 0, k_max - 1)
    if method == "bisect":
        keys_N = _sortable_keys(score_N)
        threshold = _kth_largest_key(keys_N, jnp.maximum(m, 1))
        return keys_N > threshold, keys_N == threshold
    if method == "top_k":
        threshold = jax.lax.top_k(score_N, k_max)[0][last]
    elif method == "sort":
        threshold = jnp.sort(score_N)[::-1][last]
    else:  # approx
        threshold = jax.lax.approx_max_k(score_N, k_max, recall_target=0.95)[0][last]
    return score_N > threshold, score_N == threshold


def _select_flat(excess_N, valid_N, ratio: float, method: str = "bisect"):
    """0/1 mask over one flat scope of N positions."""
    n_positions = excess_N.shape[0]
    # Static bound on m for any number of valid positions n <= N.
    k_max = max(1, min(n_positions, math.floor(ratio_fraction(ratio) * n_positions
                                               + fractions.Fraction(1, 2))))
    # Invalid positions sit strictly below every valid one, even a valid -inf.
    lowest = jnp.finfo(jnp.float32).min
    score_N = jnp.where(valid_N, jnp.maximum(excess_N.astype(jnp.float32), lowest),
                                            -jnp.inf)
    m = num_selected(valid_N.sum(), ratio)
    # Only the m-th largest score is searched for: XLA's top_k does not promise
    # which of several equal scores it returns, so ties at the threshold are
    # resolved here, towards the lower index as the spec asks.
    above_N, tied_N = _above_and_tied(score_N, m, k_max, method)
    tie_rank_N = jnp.cumsum(tied_N.astype(jnp.int32))
    room = m - above_N.sum()
    keep_N = valid_N & (above_N | (tied_N & (tie_rank_N <= room))) & (m > 0)
    return keep_N.astype(jnp.float32)


def _document_index(segment_ids_BT):
    """Index of each position's document within its row, [B, T] int32.

    A document is a run of equal segment ids: a new one starts wherever the
    id changes, so a packed row's documents are 0, 1, 2, ... left to right.
    """
    change_BT = segment_ids_BT[:, 1:] != segment_ids_BT[:, :-1]
    starts_BT = jnp.concatenate([jnp.ones_like(change_BT[:, :1]), change_BT], axis=1)
    return jnp.cumsum(starts_BT.astype(jnp.int32), axis=1) - 1


def _document_totals(score_BT, valid_BT, doc_BT):
    """Per (row, document) slot: weighted-token count and mean score, [B, D=T].

    Row-local segment sums: rows sharded over devices need no communication.
    Slots with no weighted token get count 0 and mean 0 (they select nothing).
    """
    num_slots = score_BT.shape[1]
    row_sums = jax.vmap(lambda x_T, d_T: jax.ops.segment_sum(x_T, d_T, num_segments=num_slots))
    count_BD = row_sums(valid_BT.astype(jnp.int32), doc_BT)
    # Clipped to finite, so +inf and -inf scores in one document do not sum to NaN.
    big = jnp.finfo(jnp.float32).max
    clipped_BT = jnp.clip(score_BT.astype(jnp.float32), -big, big)
    total_BD = row_sums(jnp.where(valid_BT, clipped_BT, 0.0), doc_BT)
    return count_BD, total_BD / jnp.maximum(count_BD, 1)


def _exclusive_cumsum_rowmajor(x_BD):
    """Sum of x over every earlier slot in row-major order, [B, D].

    Within-row cumsums plus the cumsum of the B row totals: only B scalars
    cross devices when rows are sharded.
    """
    within_BD = jnp.cumsum(x_BD, axis=1)
    row_total_B = within_BD[:, -1]
    rows_before_B = jnp.cumsum(row_total_B) - row_total_B
    return within_BD - x_BD + rows_before_B[:, None]


def _keep_documents_bisect(keys_BD, count_BD, m):
    """Keep rule of `select_tokens` (scope "document") by a weighted bisection."""
    # The crossing document's key: the largest key with >= m tokens at or above it.
    threshold = _kth_largest_key(keys_BD, jnp.maximum(m, 1), count_BD)
    has_tokens_BD = count_BD > 0
    above_BD = has_tokens_BD & (keys_BD > threshold)
    tied_BD = has_tokens_BD & (keys_BD == threshold)
    # Every document above the threshold comes first and they hold < m tokens;
    # tied ones follow in slot order while fewer than m tokens precede them.
    room = m - jnp.where(above_BD, count_BD, 0).sum()
    tied_before_BD = _exclusive_cumsum_rowmajor(jnp.where(tied_BD, count_BD, 0))
    return above_BD | (tied_BD & (tied_before_BD < room))


def _keep_documents_sorted(keys_BD, count_BD, m):
    """Keep rule of `select_tokens` (scope "document") by one sort of all slots."""
    keys_D, count_D = keys_BD.reshape(-1), count_BD.reshape(-1)
    # Descending key; the stable sort keeps equal keys in slot (row-major) order.
    order_D = jnp.argsort(~keys_D, stable=True)
    count_sorted_D = count_D[order_D]
    before_sorted_D = jnp.cumsum(count_sorted_D) - count_sorted_D
    keep_sorted_D = (count_sorted_D > 0) & (before_sorted_D < m)
    return jnp.zeros_like(keep_sorted_D).at[order_D].set(keep_sorted_D).reshape(keys_BD.shape)


def _select_documents(score_BT, valid_BT, segment_ids_BT, ratio: float, method: str):
    """0/1 [B, T] mask of whole documents; the rule is in `select_tokens`."""
    valid_BT = valid_BT & (segment_ids_BT != 0)
    doc_BT = _document_index(segment_ids_BT)
    count_BD, mean_BD = _document_totals(score_BT, valid_BT, doc_BT)
    m = num_selected(count_BD.sum(), ratio)
    keys_BD = _sortable_keys(mean_BD)
    if method == "bisect":
        keep_BD = _keep_documents_bisect(keys_BD, count_BD, m)
    else:
        keep_BD = _keep_documents_sorted(keys_BD, count_BD, m)
    keep_BT = jnp.take_along_axis(keep_BD, doc_BT, axis=1) & valid_BT
    return keep_BT.astype(jnp.float32)


def check_selection(ratio: float, scope: str, method: str, prefix: str = "") -> None:
    """The one check of `select_tokens`' settings; `prefix` names their owner in the
    message (SelectionConfig checks its fields with "SelectionConfig.")."""
    validate_ratio(ratio, f"{prefix}ratio")
    if scope not in SCOPES:
        raise ValueError(f"{prefix}scope={scope!r} is not one of {SCOPES}; set "
                         f"{prefix}scope='batch', 'sequence' or 'document'.")
    if method not in METHODS:
        raise ValueError(f"{prefix}method={method!r} is not one of {METHODS}; set "
                         f"{prefix}method='bisect' (exact, default) or 'top_k'.")
    if scope == "document" and method not in DOCUMENT_METHODS:
        raise ValueError(f"{prefix}method={method!r} does not apply to scope 'document'; "
                         f"set {prefix}method='bisect' or 'sort'.")


def _check_arguments(ratio: float, scope: str, method: str, segment_ids) -> None:
    check_selection(ratio, scope, method)
    if scope == "document" and segment_ids is None:
        raise ValueError("scope='document' needs segment_ids [B, T] (the batch's "
                         "'segment_ids') to know where documents start.")


def select_tokens(score, loss_weights, ratio: float, scope: str = "batch",
                  method: str = "bisect", segment_ids=None):
    """Mask of the top `ratio` share of valid tokens by score.

    Args:
        score: [B, T] float, higher is kept first: the excess loss (student
            loss minus reference loss) in Rho-1, see `selection_score`.
        loss_weights: [B, T] 0/1; weight-0 positions (padding, document
            boundaries) are never selected and do not count towards n.
        ratio: in (0, 1]. Within each scope, with n valid positions, exactly
            m = floor(ratio * n + 0.5) positions are kept (at least 1 if n >= 1),
            computed exactly with ratio read as a fraction (`ratio_fraction`).
            ratio = 1.0 keeps every valid token, so SLM at 100% is CLM.
        scope: "batch" ranks all B*T positions together; "sequence" each row;
            "document" keeps whole documents, see below.
        method: how the m-th largest score is found: "bisect" (the
            default: 32 counting passes over order-preserving integer keys,
            no gather of the scores across devices), "top_k" (jax.lax.top_k),
            "sort" -- all exact, the same mask -- or "approx"
            (jax.lax.approx_max_k; may keep a few more or fewer than m).
            Scope "document" takes "bisect" or "sort" (the same mask).
        segment_ids: [B, T] int, needed by scope "document" only.

    Scope "document": a document is a run of equal nonzero segment ids within
    a row (segment 0 is padding, never kept, not counted). n counts the
    valid positions in documents over the whole batch, m is as above. Each
    document is ranked by its mean score over its valid positions; documents
    with none are ignored. Going down that ranking (equal means: the earlier
    row, then the earlier document in the row, first), a document is kept
    while fewer than m valid positions have been kept before it: the document
    that reaches or crosses m is kept whole, so between m and
    m + (its length - 1) positions are kept, never none when n >= 1, and
    ratio = 1.0 keeps every document. Cost: two row-local segment sums over
    [B, T]; then "bisect" does 32 weighted counts over the [B, T] document
    slots (a scalar all-reduce each) and a cumsum whose only cross-row part
    is B row totals, while "sort" gathers and sorts all B*T slots.

    Returns:
        float32 [B, T] 0/1 mask. Ties go to the lower flat index.
    """
    _check_arguments(ratio, scope, method, segment_ids)
    score_BT = jnp.asarray(score)
    valid_BT = jnp.asarray(loss_weights) > 0
    if score_BT.ndim != 2 or score_BT.shape != valid_BT.shape:
        raise ValueError(
                f"select_tokens expects [B, T] score and loss_weights of the same "
                f"shape, got {score_BT.shape} and {valid_BT.shape}.")
    batch, length = score_BT.shape
    if scope == "document":
        segment_ids_BT = jnp.asarray(segment_ids)
        if segment_ids_BT.shape != score_BT.shape:
            raise ValueError(f"segment_ids has shape {segment_ids_BT.shape}, expected "
                             f"{score_BT.shape} like the score.")
        return _select_documents(score_BT, valid_BT, segment_ids_BT, ratio, method)
    if scope == "batch":
        mask_N = _select_flat(score_BT.reshape(-1), valid_BT.reshape(-1), ratio, method)
        return mask_N.reshape(batch, length)
    return jax.vmap(lambda e, v: _select_flat(e, v, ratio, method))(score_BT, valid_BT)
