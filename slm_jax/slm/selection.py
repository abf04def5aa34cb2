"""Step 3 of SLM: keep the tokens with the largest excess loss.

The reference model (step 1) and the student both score every token; the
student then trains only on the top `ratio` share of tokens ranked by

        excess_loss = student_loss - reference_loss

Rho-1 ranks the tokens of a whole batch together (`scope="batch"`); ranking
each row alone (`scope="sequence"`) is the ablation.
"""

from __future__ import annotations

import dataclasses
import fractions
import math

import gin
import jax
import jax.numpy as jnp

SCOPES = ("batch", "sequence")
MODES = ("clm", "slm", "slm_offline")
# How the m-th largest excess loss is found. All but "approx" are exact and
# select the same tokens; "approx" (lax.approx_max_k, TPU-friendly) may keep
# slightly more or fewer than m and is only used when asked for by name.
# "bisect" is the default: at a 1M-token batch it is the fastest exact one
# (`python -m slm_jax.bench`, docs/performance.md) and needs no gather.
METHODS = ("bisect", "top_k", "sort", "approx")


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
        ranks each row separately.
    method: how the threshold is found (`METHODS`; see `select_tokens`).
    """

    mode: str = "clm"
    ratio: float = 1.0
    scope: str = "batch"
    method: str = "bisect"

    @property
    def selects(self) -> bool:
        return self.mode != "clm"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(
                    f"SelectionConfig.mode={self.mode!r} is not one of {MODES}; set "
                    "SelectionConfig.mode='clm', 'slm' or 'slm_offline'.")
        validate_ratio(self.ratio, "SelectionConfig.ratio")
        if self.scope not in SCOPES:
            raise ValueError(
                    f"SelectionConfig.scope={self.scope!r} is not one of {SCOPES}; set "
                    "SelectionConfig.scope='batch' or 'sequence'.")
        if self.method not in METHODS:
            raise ValueError(
                    f"SelectionConfig.method={self.method!r} is not one of {METHODS}; set "
                    "SelectionConfig.method='bisect' (exact, default) or 'top_k'.")


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


def _kth_largest_key(keys_N, m):
    """The m-th largest key (m >= 1), built bit by bit from the top.

    32 passes of a count over the scope: under sharding each is a scalar
    all-reduce, where top_k or a sort first gathers every score.
    """
    def set_bit(i, key):
        candidate = key | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
        return jnp.where((keys_N >= candidate).sum() >= m, candidate, key)
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


def select_tokens(excess_loss, loss_weights, ratio: float,
                                    scope: str = "batch", method: str = "bisect"):
    """Mask of the top `ratio` share of valid tokens by excess loss.

    Args:
        excess_loss: [B, T] float, student loss minus reference loss per token.
        loss_weights: [B, T] 0/1; weight-0 positions (padding, document
            boundaries) are never selected and do not count towards n.
        ratio: in (0, 1]. Within each scope, with n valid positions, exactly
            m = floor(ratio * n + 0.5) positions are kept (at least 1 if n >= 1),
            computed exactly with ratio read as a fraction (`ratio_fraction`).
            ratio = 1.0 keeps every valid token, so SLM at 100% is CLM.
        scope: "batch" ranks all B*T positions together; "sequence" each row.
        method: how the m-th largest excess loss is found: "bisect" (the
            default: 32 counting passes over order-preserving integer keys,
            no gather of the scores across devices), "top_k" (jax.lax.top_k),
            "sort" -- all exact, the same mask -- or "approx"
            (jax.lax.approx_max_k; may keep a few more or fewer than m).

    Returns:
        float32 [B, T] 0/1 mask. Ties go to the lower flat index.
    """
    validate_ratio(ratio)
    if scope not in SCOPES:
        raise ValueError(f"scope={scope!r} is not one of {SCOPES}.")
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {METHODS}.")
    excess_BT = jnp.asarray(excess_loss)
    valid_BT = jnp.asarray(loss_weights) > 0
    if excess_BT.ndim != 2 or excess_BT.shape != valid_BT.shape:
        raise ValueError(
                f"select_tokens expects [B, T] excess_loss and loss_weights of the same "
                f"shape, got {excess_BT.shape} and {valid_BT.shape}.")
    batch, length = excess_BT.shape
    if scope == "batch":
        mask_N = _select_flat(excess_BT.reshape(-1), valid_BT.reshape(-1), ratio, method)
        return mask_N.reshape(batch, length)
    return jax.vmap(lambda e, v: _select_flat(e, v, ratio, method))(excess_BT, valid_BT)
