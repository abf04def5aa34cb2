"""Per-token weights of the student's objective: Rho-1's hard top-k and the weightings the
field has published since, as one pure function of the step's per-token quantities.

    w_BT, normaliser = token_weights(selection, score_BT, valid_BT, segment_ids_BT, prob_BT)
    objective        = sum(w_BT * loss_BT) / normaliser

`SelectionConfig.weighting` (slm_jax/slm/selection.py) picks the rule:

  hard    Rho-1: w = 1 on the top `ratio` share of tokens by score, 0 elsewhere;
          normaliser = the number kept (the mean over selected tokens). Scope "global":
          w = 1 where the score is at or above SelectionConfig.threshold, the corpus's
          (1 - ratio) quantile (Token Cleaning, ICML 2025).
  dense   Token Weighting (NAACL 2025 Findings): w = n * softmax(score / tau) over the
          scope's n valid tokens (mean weight 1), then (1 - lam) * w + lam; normaliser =
          sum(w). lam = 1 is plain CLM; Rho-1 is the hard, lam = 0 corner of `sparse`.
  sparse  the dense weights kept on the top `kappa` share only (kappa: SelectionConfig.kappa,
          default `ratio`), renormalised to mean 1 over the kept tokens, then interpolated
          with lam like dense; normaliser = sum(w).
  prob    DFT (arXiv 2508.05629): each token's loss times its detached probability
          exp(-loss); no reference, no selection; normaliser = the valid count.

The score is `selection_score` (excess loss by default). Weights never carry gradient.
Under gradient accumulation each micro-batch computes its own weights (as ranking is per
micro-batch) and the step divides the summed gradient by the summed normalisers, so the
objective stays sum(w * loss) / sum(normaliser) over the whole batch. Reductions run over
the global (sharded) arrays, so the device count never changes a weight.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from slm_jax.slm.selection import WEIGHTINGS, select_tokens, selection_score


def _softmax_weights(score_BT, keep_BT, tau: float, scope: str):
    """n * softmax(score / tau) over the kept positions of each scope (mean weight 1 over
    them), 0 elsewhere."""
    axis = None if scope == "batch" else 1
    logits_BT = jnp.where(keep_BT > 0, score_BT / tau, -jnp.inf)
    peak = jnp.max(logits_BT, axis=axis, keepdims=True)
    peak = jnp.where(jnp.isfinite(peak), peak, 0.0)
    exp_BT = jnp.where(keep_BT > 0, jnp.exp(logits_BT - peak), 0.0)
    count = keep_BT.sum(axis=axis, keepdims=True)
    total = exp_BT.sum(axis=axis, keepdims=True)
    return jnp.where(total > 0, count * exp_BT / jnp.where(total > 0, total, 1.0), 0.0)


def token_weights(selection, score_BT, valid_BT, segment_ids_BT=None, prob_BT=None):
    """(w_BT >= 0, normaliser) for `selection.weighting`; see the module docstring.

    score_BT: what is ranked (highest first), e.g. the excess loss; valid_BT: 0/1 loss
    weights (padding 0); prob_BT: the student's probability of each target (prob only).
    Everything is treated as a constant (no gradient flows through the weights)."""
    score_BT = jax.lax.stop_gradient(score_BT)
    valid_BT = valid_BT.astype(jnp.float32)
    kind = selection.weighting
    if kind == "hard" and selection.scope == "global":
        if selection.threshold is None:
            raise ValueError("SelectionConfig.scope='global' needs SelectionConfig.threshold "
                             "(the train job sets it from train.scored_data's score sketch).")
        mask_BT = (valid_BT > 0) & (score_BT >= selection.threshold)
        return mask_BT.astype(jnp.float32), mask_BT.sum().astype(jnp.float32)
    if kind == "hard":
        mask_BT = select_tokens(score_BT, valid_BT, selection.ratio, selection.scope,
                                selection.method, segment_ids_BT)
        return mask_BT, mask_BT.sum()
    if kind == "prob":
        w_BT = jax.lax.stop_gradient(prob_BT).astype(jnp.float32) * valid_BT
        return w_BT, valid_BT.sum()
    if kind == "dense":
        w_BT = _softmax_weights(score_BT, valid_BT, selection.tau, selection.scope)
    elif kind == "sparse":
        kept_BT = select_tokens(score_BT, valid_BT, selection.kappa or selection.ratio,
                                selection.scope, selection.method, segment_ids_BT)
        w_BT = _softmax_weights(score_BT, kept_BT, selection.tau, selection.scope)
    else:
        raise ValueError(f"SelectionConfig.weighting={kind!r} is not one of {WEIGHTINGS}")
    w_BT = (1.0 - selection.lam) * w_BT + selection.lam * valid_BT
    return w_BT, w_BT.sum()


def objective_weights(selection, loss_BT, ref_loss_BT, valid_BT, segment_ids_BT,
                      entropy_BT=None):
    """(w_BT, normaliser) of the train step's objective: every valid token for plain CLM,
    else `token_weights` of the selection's score (`selection_score`) of these losses."""
    if not selection.weighs:
        return valid_BT, valid_BT.sum()
    loss_BT = jax.lax.stop_gradient(loss_BT)
    score_BT = selection_score(selection.score, loss_BT, ref_loss_BT, entropy_BT)
    return token_weights(selection, score_BT, valid_BT, segment_ids_BT, jnp.exp(-loss_BT))
