"""Rho-1 §2.1: how each token's loss moves over training (H→H, L→H, H→L, L→L).

Given the losses of the same N held-out tokens at C checkpoints, each token's
trajectory is fitted with a least-squares line over the checkpoint index
0, 1, ..., C-1 (so the slope is "loss change per saved checkpoint", and the
threshold should be read against the spacing of the checkpoints used):

    slope < -threshold                  -> H→L  (the token was learnt)
    slope > +threshold                  -> L→H  (the token got worse)
    otherwise, final loss < mean final  -> L→L  (already easy, stays easy)
    otherwise                           -> H→H  (hard, stays hard)

"final loss" is the token's measured loss at the last checkpoint and "mean
final" its mean over all N tokens. Pure numpy.
"""

from __future__ import annotations

import dataclasses

import numpy as np

CATEGORIES = ("H→H", "L→H", "H→L", "L→L")
HH, LH, HL, LL = range(len(CATEGORIES))
SLOPE_THRESHOLD = 0.2


@dataclasses.dataclass(frozen=True)
class TokenCategories:
    labels_N: np.ndarray   # int8 index into CATEGORIES, one per token
    slopes_N: np.ndarray   # fitted loss slope per checkpoint index
    mean_final_loss: float
    slope_threshold: float

    @property
    def num_tokens(self) -> int:
        return int(self.labels_N.shape[0])

    @property
    def counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels_N, minlength=len(CATEGORIES))
        return {name: int(c) for name, c in zip(CATEGORIES, counts)}

    @property
    def shares(self) -> dict[str, float]:
        total = max(self.num_tokens, 1)
        return {name: c / total for name, c in self.counts.items()}


def loss_slopes(loss_CN: np.ndarray) -> np.ndarray:
    """Least-squares slope of each column over x = 0..C-1; zeros when C < 2."""
    loss_CN = np.asarray(loss_CN, np.float64)
    num_checkpoints = loss_CN.shape[0]
    if num_checkpoints < 2:
        return np.zeros(loss_CN.shape[1])
    x_C = np.arange(num_checkpoints, dtype=np.float64)
    x_C -= x_C.mean()
    # With a centred x the intercept drops out: slope = <x, y> / <x, x>.
    return x_C @ loss_CN / (x_C @ x_C)


def classify_tokens(loss_CN: np.ndarray,
                    slope_threshold: float = SLOPE_THRESHOLD) -> TokenCategories:
    """Categories of N tokens from their losses at C checkpoints ([C, N], training order)."""
    loss_CN = np.asarray(loss_CN, np.float64)
    if loss_CN.ndim != 2 or loss_CN.shape[1] == 0:
        raise ValueError(f"classify_tokens expects losses [C checkpoints, N tokens] with N >= 1, "
                         f"got shape {loss_CN.shape}.")
    slopes_N = loss_slopes(loss_CN)
    final_N = loss_CN[-1]
    mean_final = float(final_N.mean())
    labels_N = np.where(final_N < mean_final, LL, HH)
    labels_N = np.where(slopes_N > slope_threshold, LH, labels_N)
    labels_N = np.where(slopes_N < -slope_threshold, HL, labels_N)
    return TokenCategories(labels_N=labels_N.astype(np.int8), slopes_N=slopes_N,
                           mean_final_loss=mean_final, slope_threshold=float(slope_threshold))
