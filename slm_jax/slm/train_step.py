"""The one jitted SLM step: reference forward, student forward+backward,
excess loss, top-k mask and the optax update, all in one XLA program.

    ref_loss_BT     = reference(batch)                 (frozen; skipped in "clm";
                                                        read from batch["ref_loss"]
                                                        in "slm_offline")
    loss_BT         = student(batch)
    score_BT        = loss_BT - ref_loss_BT            (SelectionConfig.score: or loss_BT,
                                                        or -ref_loss_BT)
    w_BT, norm      = objective_weights(selection, loss_BT, ref_loss_BT, weights_BT, ...)
                      (Rho-1's "hard" weighting: the top-k mask of select_tokens,
                       norm = its count; dense/sparse/prob: slm_jax/slm/weighting.py)
    objective       = sum(w_BT * loss_BT) / max(norm, 1)

With gradient accumulation the batch is split into micro-batches; each
micro-batch ranks (weighs) its own tokens (selection is per micro-batch) and the
gradient is the sum of per-micro-batch sums divided by the summed normalisers
(the total number of selected tokens for hard selection), so the objective is
still a mean over selected tokens.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from slm_jax.slm import losses
from slm_jax import model as model_lib
from slm_jax.slm.reference import SelfReference
from slm_jax.slm.selection import SelectionConfig
from slm_jax.slm.weighting import objective_weights

Batch = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    # The reference's params when they are the student's own history (ReferenceConfig
    # source "ema"/"snapshot"); None for a checkpoint reference or no reference.
    ref_params: Any = None


def init_train_state(model_config, tx, rng, self_reference: SelfReference | None = None
                     ) -> TrainState:
    params = model_lib.init_params(model_config, rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      ref_params=self_reference and self_reference.initial(params))


def make_loss_fn(model_config, with_entropy: bool = False) -> Callable:
    """(params, batch) -> per-token loss [B, T] in float32, chunked by
    `model_config.loss_chunk_size`; `with_entropy`: (loss, predictive entropy)."""
    decoder = model_lib.Decoder(model_config)

    def loss_fn(params, batch: Batch):
        hidden_BTD = decoder.apply({"params": params}, batch["inputs"],
                                   batch["positions"], batch["segment_ids"])
        return losses.per_token_loss(hidden_BTD, model_lib.unembedding(params, model_config),
                                     batch["targets"], chunk_size=model_config.loss_chunk_size,
                                     with_entropy=with_entropy)
    return loss_fn


def _split_micro_batches(batch: Batch, grad_accum: int) -> Batch:
    """[B, ...] -> [A, B/A, ...], micro-batch a = rows a, a+A, a+2A, ...

    Strided rows keep every micro-batch spread over all data-parallel shards
    (contiguous slices would live on a subset of the devices).
    """
    def split(x):
        return jnp.swapaxes(x.reshape((x.shape[0] // grad_accum, grad_accum) + x.shape[1:]), 0, 1)
    return jax.tree.map(split, batch)


def make_train_step(model_config, selection: SelectionConfig, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, *, grad_accum: int = 1,
                    reference_model_config=None,
                    self_reference: SelfReference | None = None) -> Callable:
    """Builds `step(state, ref_params, batch) -> (state, metrics)` (not yet jitted).

    `ref_params` is ignored (may be None) in "clm" and "slm_offline" modes: no
    reference forward runs; "slm_offline" batches carry "ref_loss" [B, T]. With
    `self_reference` the reference is `state.ref_params` (cast to the reference's
    dtype), updated after each step from the new params.
    """
    entropy = selection.selects and selection.score == "entropy"
    student_loss_fn = make_loss_fn(model_config, with_entropy=entropy)
    reference_loss_fn = make_loss_fn(reference_model_config or model_config)
    use_reference = selection.selects

    def micro_step(params, ref_params, micro: Batch):
        weights_BT = micro["loss_weights"].astype(jnp.float32)
        if selection.mode == "slm":
            ref_loss_BT = jax.lax.stop_gradient(reference_loss_fn(ref_params, micro))
        elif selection.mode == "slm_offline":
            ref_loss_BT = micro["ref_loss"].astype(jnp.float32)
        else:
            ref_loss_BT = jnp.zeros_like(weights_BT)

        def objective(p):
            loss_BT, entropy_BT = student_loss_fn(p, micro) if entropy else (
                student_loss_fn(p, micro), None)
            w_BT, norm = objective_weights(selection, loss_BT, ref_loss_BT, weights_BT,
                                           micro["segment_ids"], entropy_BT)
            return (w_BT * loss_BT).sum(), (loss_BT, w_BT, norm)

        (selected_sum, (loss_BT, w_BT, norm)), grads = jax.value_and_grad(
            objective, has_aux=True)(params)
        sums = {
            "loss": (weights_BT * loss_BT).sum(),
            "selected_loss": selected_sum,
            "ref_loss": (weights_BT * ref_loss_BT).sum(),
            "excess": (weights_BT * (loss_BT - ref_loss_BT)).sum(),
            "tokens": weights_BT.sum(),
            "selected": (w_BT > 0).sum().astype(jnp.float32),
            "normaliser": norm,
        }
        return grads, sums

    def step(state: TrainState, ref_params, batch: Batch):
        if self_reference is not None:
            ref_params = jax.tree.map(lambda x: x.astype(self_reference.dtype),
                                      state.ref_params)
        if grad_accum == 1:
            grads, sums = micro_step(state.params, ref_params, batch)
        else:
            def body(carry, micro):
                grads, sums = micro_step(state.params, ref_params, micro)
                return jax.tree.map(jnp.add, carry, (grads, sums)), None
            zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(
                micro_step, state.params, ref_params,
                jax.tree.map(lambda x: x[0], _split_micro_batches(batch, grad_accum))))
            (grads, sums), _ = jax.lax.scan(body, zeros, _split_micro_batches(batch, grad_accum))

        normaliser = jnp.maximum(sums["normaliser"], 1.0)
        n_tokens = jnp.maximum(sums["tokens"], 1.0)
        grads = jax.tree.map(lambda g: g / normaliser, grads)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(grad_norm) & jnp.isfinite(sums["selected_loss"])
        new_state = _apply_gradients(tx, state, grads, finite, self_reference)
        metrics = {
            "loss": sums["loss"] / n_tokens,
            "selected_loss": sums["selected_loss"] / normaliser,
            "selected_frac": sums["selected"] / n_tokens,
            "tokens": sums["tokens"],
            "grad_norm": grad_norm,
            "skipped": 1.0 - finite.astype(jnp.float32),
            "lr": schedule(state.step),
        }
        if use_reference:
            metrics["ref_loss"] = sums["ref_loss"] / n_tokens
            metrics["excess_loss"] = sums["excess"] / n_tokens
        return new_state, metrics

    return step


def _apply_gradients(tx, state: TrainState, grads, finite, self_reference) -> TrainState:
    """The optax update (and an in-state reference's), applied only where `finite`: a
    NaN/Inf loss or gradient never reaches the params, the moments or the reference."""
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ref_params = self_reference and self_reference.update(state.ref_params, params,
                                                           state.step + 1)
    params, opt_state, ref_params = jax.tree.map(
        lambda new, old: jnp.where(finite, new, old), (params, opt_state, ref_params),
        (state.params, state.opt_state, state.ref_params))
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                      ref_params=ref_params)


def make_score_step(model_config) -> Callable:
    """(params, batch) -> per-token loss [B, T], zero where loss_weights is 0."""
    loss_fn = make_loss_fn(model_config)

    def score_step(params, batch: Batch):
        return loss_fn(params, batch) * (batch["loss_weights"] > 0)
    return score_step


def make_eval_step(model_config) -> Callable:
    """(params, batch) -> (sum of weighted loss, sum of weights)."""
    loss_fn = make_loss_fn(model_config)

    def eval_step(params, batch: Batch):
        weights_BT = batch["loss_weights"].astype(jnp.float32)
        return (weights_BT * loss_fn(params, batch)).sum(), weights_BT.sum()
    return eval_step
