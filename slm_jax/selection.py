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
    """

    mode: str = "clm"
    ratio: float = 1.0
    scope: str = "batch"

    @property
    def selects(self) -> bool:
        return self.mode != "clm"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(
                    f"SelectionConfig.mode={self.mode!r} is not one of {MODES}; set "
                    "--gin.SelectionConfig.mode='clm', 'slm' or 'slm_offline'.")
        validate_ratio(self.ratio, "SelectionConfig.ratio")
        if self.scope not in SCOPES:
            raise ValueError(
                    f"SelectionConfig.scope={self.scope!r} is not one of {SCOPES}; set "
                    "--gin.SelectionConfig.scope='batch' or 'sequence'.")


def validate_ratio(ratio: float, binding: str = "ratio") -> None:
    if not (isinstance(ratio, (int, float)) and 0.0 < ratio <= 1.0):
        raise ValueError(
                f"{binding}={ratio!r} must be in (0, 1] (the share of tokens kept, "
                f"e.g. 0.6 for Rho-1 1B); set --gin.{binding}=0.6.")


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


def _select_flat(excess_N, valid_N, ratio: float):
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
    # top_k only gives the m-th largest score: XLA's top_k does not promise
    # which of several equal scores it returns, so ties at the threshold are
    # resolved explicitly, towards the lower index as the spec asks.
    top_K, _ = jax.lax.top_k(score_N, k_max)
    threshold = top_K[jnp.clip(m - 1, 0, k_max - 1)]
    above_N = score_N > threshold
    tied_N = score_N == threshold
    tie_rank_N = jnp.cumsum(tied_N.astype(jnp.int32))
    room = m - above_N.sum()
    keep_N = valid_N & (above_N | (tied_N & (tie_rank_N <= room))) & (m > 0)
    return keep_N.astype(jnp.float32)


def select_tokens(excess_loss, loss_weights, ratio: float,
                                    scope: str = "batch"):
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

    Returns:
        float32 [B, T] 0/1 mask. Ties go to the lower flat index.
    """
    validate_ratio(ratio)
    if scope not in SCOPES:
        raise ValueError(f"scope={scope!r} is not one of {SCOPES}.")
    excess_BT = jnp.asarray(excess_loss)
    valid_BT = jnp.asarray(loss_weights) > 0
    if excess_BT.ndim != 2 or excess_BT.shape != valid_BT.shape:
        raise ValueError(
                f"select_tokens expects [B, T] excess_loss and loss_weights of the same "
                f"shape, got {excess_BT.shape} and {valid_BT.shape}.")
    batch, length = excess_BT.shape
    if scope == "batch":
        mask_N = _select_flat(excess_BT.reshape(-1), valid_BT.reshape(-1), ratio)
        return mask_N.reshape(batch, length)
    return jax.vmap(lambda e, v: _select_flat(e, v, ratio))(excess_BT, valid_BT)


def masked_mean(loss_BT, mask_BT):
    """sum(mask * loss) / max(sum(mask), 1): the SLM (and CLM) training loss."""
    mask_BT = mask_BT.astype(jnp.float32)
    return (mask_BT * loss_BT).sum() / jnp.maximum(mask_BT.sum(), 1.0)
