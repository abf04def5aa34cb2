"""Log-probabilities of continuations given contexts, batched and sharded like training.

A request is (context ids, continuation ids). As in lm-eval's Hugging Face backend the
model reads (context + continuation)[-(max_length + 1):][:-1] and the last
len(continuation) positions are scored: the sum of their fp32 log-softmax at the
continuation tokens, and whether every one of them is the argmax (greedy decoding
would have produced the continuation).

Rows are right-padded (the causal mask keeps padding out of every real position),
sorted longest first, padded in width to a multiple of `length_bucket` and in number
to a power of two (at most `batch_size`) rounded up to the data-parallel size: few
shapes, so few compilations. Only two numbers per row leave the device; the
[B, T, V] logits exist one `chunk_size` slice of T at a time.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from slm_jax import model as model_lib
from slm_jax.model.decoder import project
from slm_jax.model.generate import round_up

Request = tuple[Sequence[int], Sequence[int]]


def _next_power_of_two(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _chunk_scores(hidden_BCD, unembed_DV, targets_BC):
    """(log p(target), target is the argmax) for one slice of positions, in fp32."""
    logits_BCV = project(hidden_BCD, unembed_DV, preferred_element_type=jnp.float32)
    target_logit_BC = jnp.take_along_axis(logits_BCV, targets_BC[..., None], axis=-1)[..., 0]
    logprob_BC = target_logit_BC - jax.nn.logsumexp(logits_BCV, axis=-1)
    greedy_BC = jnp.argmax(logits_BCV, axis=-1) == targets_BC
    return logprob_BC, greedy_BC


def token_scores(hidden_BTD, unembed_DV, targets_BT, chunk_size: int):
    """Per-position (log p(target) [B, T] fp32, target is the argmax [B, T] bool)."""
    batch, length, d_model = hidden_BTD.shape
    chunk = min(chunk_size, length)
    padded = round_up(length, chunk)
    hidden_BTD = jnp.pad(hidden_BTD, ((0, 0), (0, padded - length), (0, 0)))
    targets_BT = jnp.pad(targets_BT, ((0, 0), (0, padded - length)))
    # Chunks lead, batch stays second: the batch sharding carries through lax.map.
    hidden_NBCD = jnp.moveaxis(hidden_BTD.reshape(batch, -1, chunk, d_model), 1, 0)
    targets_NBC = jnp.moveaxis(targets_BT.reshape(batch, -1, chunk), 1, 0)
    unembed_DV = unembed_DV.astype(hidden_BTD.dtype)
    logprob_NBC, greedy_NBC = jax.lax.map(
        lambda xs: _chunk_scores(xs[0], unembed_DV, xs[1]), (hidden_NBCD, targets_NBC))
    unchunk = lambda x: jnp.moveaxis(x, 0, 1).reshape(batch, padded)[:, :length]
    return unchunk(logprob_NBC), unchunk(greedy_NBC)


@functools.lru_cache(maxsize=16)
def make_score_fn(config: model_lib.ModelConfig, chunk_size: int = 256):
    """(params, batch) -> (sum of log p over scored positions [B], all of them greedy [B]).

    `batch` has the training keys; `loss_weights` marks the scored positions. Cached: one
    function per config, so JAX's compilation cache serves every scorer of that model."""
    decoder = model_lib.Decoder(config)

    def score(params, batch):
        hidden_BTD = decoder.apply({"params": params}, batch["inputs"], batch["positions"],
                                   batch["segment_ids"])
        logprob_BT, greedy_BT = token_scores(hidden_BTD, model_lib.unembedding(params, config),
                                             batch["targets"], chunk_size)
        scored_BT = batch["loss_weights"] > 0
        return (jnp.sum(jnp.where(scored_BT, logprob_BT, 0.0), axis=1),
                jnp.all(greedy_BT | ~scored_BT, axis=1))
    return score


def model_window(context: Sequence[int], continuation: Sequence[int], max_length: int):
    """(inputs, targets): what the model reads and predicts, cut from the left to fit."""
    if not context or not continuation:
        raise ValueError("a loglikelihood request needs context and continuation tokens "
                         f"(got {len(context)} and {len(continuation)})")
    if len(continuation) > max_length:
        raise ValueError(f"a continuation of {len(continuation)} tokens does not fit in "
                         f"max_length={max_length}")
    full = (list(context) + list(continuation))[-(max_length + 1):]
    return full[:-1], full[1:]


class ContinuationScorer:
    """Scores requests with params sharded like `runtime`'s training params."""

    def __init__(self, config: model_lib.ModelConfig, runtime, *, batch_size: int = 16,
                 max_length: int | None = None, length_bucket: int = 64, chunk_size: int = 256):
        self.config = config
        self.runtime = runtime
        self.batch_size = batch_size
        self.max_length = max_length or config.max_seq_len
        if self.max_length > config.max_seq_len:
            raise ValueError(f"max_length={self.max_length} exceeds ModelConfig.max_seq_len="
                             f"{config.max_seq_len}")
        self.length_bucket = length_bucket
        self._score = runtime.jit_eval(make_score_fn(config, chunk_size), config)

    def __call__(self, params, requests: Sequence[Request]) -> list[tuple[float, bool]]:
        windows = [model_window(c, t, self.max_length) for c, t in requests]
        order = sorted(range(len(windows)), key=lambda i: -len(windows[i][0]))
        results: list[tuple[float, bool] | None] = [None] * len(windows)
        with self.runtime.activate():
            for start in range(0, len(order), self.batch_size):
                rows = order[start:start + self.batch_size]
                batch = self._batch([windows[i] for i in rows],
                                    [len(requests[i][1]) for i in rows])
                logprob_B, greedy_B = jax.device_get(self._score(params, batch))
                for k, i in enumerate(rows):
                    results[i] = (float(logprob_B[k]), bool(greedy_B[k]))
        return results

    def _batch(self, windows, n_scored) -> dict[str, np.ndarray]:
        longest = max(len(inputs) for inputs, _ in windows)
        width = min(round_up(longest, self.length_bucket), self.max_length)
        rows = round_up(min(_next_power_of_two(len(windows)), self.batch_size),
                         self.runtime.data_parallel_size)
        inputs = np.zeros((rows, width), np.int32)
        targets = np.zeros((rows, width), np.int32)
        weights = np.zeros((rows, width), np.float32)
        for k, ((x, y), n) in enumerate(zip(windows, n_scored)):
            inputs[k, :len(x)], targets[k, :len(y)] = x, y
            weights[k, len(y) - n:len(y)] = 1.0
        # Right padding needs no segment mask: causal attention never looks ahead.
        positions = np.broadcast_to(np.arange(width, dtype=np.int32), (rows, width)).copy()
        return {"inputs": inputs, "targets": targets, "positions": positions,
                "segment_ids": np.ones((rows, width), np.int32), "loss_weights": weights}
