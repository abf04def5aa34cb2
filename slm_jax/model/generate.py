"""Batched generation with a KV cache: greedy, temperature and top-p sampling.

    prefill   one forward over the padded prompts [B, P] fills cache slots [0, P)
    decode    a jitted lax.while_loop: sample from the last logits, write the token,
              forward it alone at slot P + i (its position is the row's length + i)

Prompts of different lengths sit in one [B, P] buffer, padded on the right or the
left (`pad_side`); padding is never attended to and RoPE positions count only real
tokens, so either side gives the same continuation as decoding each prompt alone.
EOS stops a row on device. Stop strings are checked on the host after every chunk
of `chunk_size` tokens by detokenising the row (and ending it there); the loop exits
early once every row is done.

Sharding: the model layer knows no mesh; a caller that has one passes a `placement`
(slm_jax.parallel.runtime.Runtime: a mesh and its logical rules). Then params take the
training shardings, the batch is split over the data axes (padded to a multiple of them)
and the KV cache follows the model's logical activation layout. Without one, arrays go to
the default device; under a mesh the caller has set (jax.set_mesh with flax's logical
rules), the batch still pads to a multiple of the mesh axes the batch is sharded over.

`greedy_generate_uncached` is the original recomputation decoder (one full forward
of the [N, T] buffer per token); it stays as the test oracle and benchmark baseline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from slm_jax import model as model_lib
from slm_jax.model.config import ACT_BATCH


class Placement(Protocol):
    """Where generation puts its arrays; slm_jax.parallel.runtime.Runtime is one."""

    data_parallel_size: int   # devices the batch is split over (it pads to a multiple)

    def batch_sharding(self) -> jax.sharding.Sharding: ...  # [B, ...] prompt arrays

    def param_shardings(self, model_config: model_lib.ModelConfig): ...  # the params tree

    def activate(self) -> contextlib.AbstractContextManager: ...  # activation constraints


@dataclasses.dataclass
class Completion:
    """One row's continuation (without the prompt).

    `tokens` end before EOS; with a stop string they run up to the token that
    completed it, while `text` is cut just before the stop string.
    `finish_reason`: "eos", "stop" (a stop string) or "length".
    """

    tokens: list[int]
    text: str | None = None
    finish_reason: str = "length"


def sample_tokens(logits_BV: jax.Array, rng, temperature, top_p) -> jax.Array:
    """Greedy when temperature <= 0; else softmax(logits / T) restricted to the top-p nucleus.

    `temperature` and `top_p` may be traced scalars (one compilation for all settings).
    """
    logits_BV = logits_BV.astype(jnp.float32)

    def nucleus(scaled_BV):
        sorted_BV = jnp.sort(scaled_BV, axis=-1)[:, ::-1]
        probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
        # Keep a token while the mass before it is below top_p: the top token always stays.
        keep_BV = (jnp.cumsum(probs_BV, axis=-1) - probs_BV) < top_p
        threshold_B1 = jnp.min(jnp.where(keep_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
        return jnp.where(scaled_BV >= threshold_B1, scaled_BV, -jnp.inf)

    def sample(logits_BV):
        scaled_BV = logits_BV / jnp.maximum(temperature, 1e-30)
        scaled_BV = jax.lax.cond(top_p < 1.0, nucleus, lambda x: x, scaled_BV)
        return jax.random.categorical(rng, scaled_BV, axis=-1).astype(jnp.int32)

    def greedy(logits_BV):
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)

    return jax.lax.cond(temperature <= 0.0, greedy, sample, logits_BV)


def _project(params, config, hidden_BD):
    w_DV = model_lib.unembedding(params, config).astype(hidden_BD.dtype)
    return jnp.einsum("bd,dv->bv", hidden_BD, w_DV, preferred_element_type=jnp.float32)


@functools.partial(jax.jit, static_argnames=("config", "cache_len", "max_new_tokens"))
def prefill(params, tokens_BP, mask_BP, rng, *, config, cache_len, max_new_tokens):
    batch, length = tokens_BP.shape
    mask_BP = mask_BP.astype(jnp.int32)
    positions_BP = jnp.maximum(jnp.cumsum(mask_BP, axis=1) - 1, 0)
    cache = model_lib.init_cache(config, batch, cache_len)
    hidden_BPD, cache = model_lib.Decoder(config).apply(
        {"params": params}, tokens_BP, positions_BP, mask_BP, cache=cache)
    last_B = length - 1 - jnp.argmax(mask_BP[:, ::-1], axis=1)  # last real token of each row
    hidden_BD = jnp.take_along_axis(hidden_BPD, last_B[:, None, None], axis=1)[:, 0]
    return {"cache": cache, "logits": _project(params, config, hidden_BD),
            "out": jnp.zeros((batch, max_new_tokens), jnp.int32),
            "step": jnp.zeros((), jnp.int32), "done": jnp.sum(mask_BP, axis=1) == 0,
            "pos": jnp.sum(mask_BP, axis=1), "rng": rng}


@functools.partial(jax.jit, static_argnames=("config", "eos_id"), donate_argnums=(1,))
def decode_steps(params, state, stop_at, temperature, top_p, *, config, eos_id):
    """Decodes until step == stop_at or every row is done."""
    decoder = model_lib.Decoder(config)

    def cond(s):
        return (s["step"] < stop_at) & ~jnp.all(s["done"])

    def body(s):
        rng, step_rng = jax.random.split(s["rng"])
        token_B = sample_tokens(s["logits"], step_rng, temperature, top_p)
        out = jax.lax.dynamic_update_slice(s["out"], token_B[:, None], (0, s["step"]))
        done_B = s["done"] | (token_B == eos_id) if eos_id is not None else s["done"]
        hidden_B1D, cache = decoder.apply({"params": params}, token_B[:, None],
                                          s["pos"][:, None], jnp.ones_like(token_B)[:, None],
                                          cache=s["cache"])
        return {"cache": cache, "logits": _project(params, config, hidden_B1D[:, 0]),
                "out": out, "step": s["step"] + 1, "done": done_B, "pos": s["pos"] + 1,
                "rng": rng}

    return jax.lax.while_loop(cond, body, state)


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of `multiple` >= n (batch and length buckets)."""
    return -(-n // multiple) * multiple


def _ambient_data_parallel_size() -> int:
    """Under a mesh the caller has set (jax.set_mesh and flax's logical axis rules, as in
    Runtime.activate()): the size of the mesh axes the activation batch is sharded over.
    1 without a mesh or without a rule for the batch."""
    mesh = jax.sharding.get_abstract_mesh()
    axes = dict(nn.get_logical_axis_rules()).get(ACT_BATCH)
    if not mesh.shape or axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else axes
    return int(np.prod([mesh.shape[a] for a in axes if a in mesh.shape]))


def _first_stop(text: str, stop_strings: Sequence[str]) -> int | None:
    hits = [text.find(s) for s in stop_strings if s and s in text]
    return min(hits) if hits else None


class Generator:
    """Compiled batched generation for one model config, optionally sharded by `placement`
    (a Placement, e.g. slm_jax.parallel.runtime.Runtime: its mesh and logical rules).

    `generate` splits the prompts into batches of `batch_size` (longest first, so each
    batch pads little), pads the prompt length to a multiple of `prompt_bucket` (fewer
    recompilations) and returns one Completion per prompt, in the input order.
    """

    def __init__(self, config: model_lib.ModelConfig, *, placement: Placement | None = None,
                 batch_size: int = 32, prompt_bucket: int = 64):
        self.config = config
        self.placement = placement
        self.batch_size = batch_size
        self.prompt_bucket = prompt_bucket

    def shard_params(self, params):
        """Places params with the training shardings (no-op without a placement)."""
        if self.placement is None:
            return params
        return jax.device_put(params, self.placement.param_shardings(self.config))

    def _context(self):
        if self.placement is None:
            return contextlib.nullcontext()
        return self.placement.activate()

    def _put_batch(self, array: np.ndarray):
        if self.placement is None:
            return jnp.asarray(array)
        return jax.device_put(array, self.placement.batch_sharding())

    def _data_parallel_size(self) -> int:
        if self.placement is None:
            return _ambient_data_parallel_size()
        return self.placement.data_parallel_size

    def generate(self, params, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                 temperature: float = 0.0, top_p: float = 1.0, eos_id: int | None = None,
                 stop_strings: Sequence[str] = (), decode: Callable[[list[int]], str] | None = None,
                 pad_side: str = "right", chunk_size: int | None = None,
                 seed: int = 0) -> list[Completion]:
        """Continuations of `prompts` (token id lists); see the module docstring."""
        if pad_side not in ("left", "right"):
            raise ValueError(f"pad_side={pad_side!r} must be 'left' or 'right'")
        if stop_strings and decode is None:
            raise ValueError("stop_strings need `decode` (token ids -> text) to be checked")
        if not prompts:
            return []
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token (e.g. BOS)")
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        results: list[Completion | None] = [None] * len(prompts)
        rng = jax.random.key(seed)
        with self._context():
            for start in range(0, len(order), self.batch_size):
                rows = order[start:start + self.batch_size]
                rng, batch_rng = jax.random.split(rng)
                done = self._generate_batch(
                    params, [prompts[i] for i in rows], batch_rng, max_new_tokens=max_new_tokens,
                    temperature=float(temperature), top_p=float(top_p), eos_id=eos_id,
                    stop_strings=tuple(stop_strings), decode=decode, pad_side=pad_side,
                    chunk_size=chunk_size)
                for i, completion in zip(rows, done):
                    results[i] = completion
        return results

    def _generate_batch(self, params, prompts, rng, *, max_new_tokens, temperature, top_p,
                        eos_id, stop_strings, decode, pad_side, chunk_size):
        cfg = self.config
        longest = max(len(p) for p in prompts)
        if longest >= cfg.max_seq_len:
            raise ValueError(f"a prompt of {longest} tokens leaves no room under "
                             f"ModelConfig.max_seq_len={cfg.max_seq_len}")
        # Bucketed prompt width, but never at the cost of new tokens under max_seq_len.
        width = max(longest, min(round_up(longest, self.prompt_bucket),
                                 cfg.max_seq_len - max_new_tokens))
        new_tokens = min(max_new_tokens, cfg.max_seq_len - width)
        batch = round_up(len(prompts), self._data_parallel_size())
        tokens = np.zeros((batch, width), np.int32)
        mask = np.zeros((batch, width), np.int32)
        for i, p in enumerate(prompts):
            lo = 0 if pad_side == "right" else width - len(p)
            tokens[i, lo:lo + len(p)] = p
            mask[i, lo:lo + len(p)] = 1
        state = prefill(params, self._put_batch(tokens), self._put_batch(mask), rng, config=cfg,
                         cache_len=width + new_tokens, max_new_tokens=new_tokens)
        chunk = chunk_size or (32 if stop_strings else new_tokens)
        n = len(prompts)
        finish = ["length"] * n
        stop_at_token: list[int | None] = [None] * n
        texts: list[str | None] = [None] * n
        step = 0
        while step < new_tokens:
            step = min(step + chunk, new_tokens)
            state = decode_steps(params, state, jnp.int32(step), jnp.float32(temperature),
                            jnp.float32(top_p), config=cfg, eos_id=eos_id)
            if not stop_strings and decode is None:
                if bool(jax.device_get(jnp.all(state["done"]))):
                    break
                continue
            out = np.asarray(jax.device_get(state["out"]))
            done = np.asarray(jax.device_get(state["done"])).copy()
            produced = int(jax.device_get(state["step"]))
            newly_done = False
            for i in range(n):
                if stop_at_token[i] is not None:
                    continue
                row = _until_eos(out[i, :produced], eos_id)
                if stop_strings and _first_stop(decode(row), stop_strings) is not None:
                    # The shortest prefix that contains a stop string ends the row.
                    k = next(k for k in range(1, len(row) + 1)
                             if _first_stop(decode(row[:k]), stop_strings) is not None)
                    stop_at_token[i] = k
                    finish[i] = "stop"
                    if not done[i]:
                        done[i] = newly_done = True
            if newly_done:
                state["done"] = self._put_batch(done)
            if done[:n].all():
                break
        out = np.asarray(jax.device_get(state["out"]))
        produced = int(jax.device_get(state["step"]))
        completions = []
        for i in range(n):
            row = out[i, :produced].tolist()
            if stop_at_token[i] is not None:
                row = row[:stop_at_token[i]]
            elif eos_id is not None and eos_id in row:
                row = row[:row.index(eos_id)]
                finish[i] = "eos"
            if decode is not None:
                texts[i] = decode(row)
                cut = _first_stop(texts[i], stop_strings) if stop_strings else None
                if cut is not None:
                    texts[i] = texts[i][:cut]
            completions.append(Completion(tokens=row, text=texts[i], finish_reason=finish[i]))
        return completions


def _until_eos(row: np.ndarray, eos_id: int | None) -> list[int]:
    row = row.tolist()
    if eos_id is not None and eos_id in row:
        return row[:row.index(eos_id)]
    return row


def generate(params, config: model_lib.ModelConfig, prompts: Sequence[Sequence[int]], *,
             max_new_tokens: int, placement: Placement | None = None,
             batch_size: int = 32, **kwargs) -> list[Completion]:
    """One-call form of `Generator(config, placement=...).generate(params, prompts, ...)`."""
    return Generator(config, placement=placement, batch_size=batch_size).generate(
        params, prompts, max_new_tokens=max_new_tokens, **kwargs)


def greedy_generate(params, config: model_lib.ModelConfig, prompts: list[list[int]], *,
                    max_new_tokens: int, eos_id: int | None) -> list[list[int]]:
    """Greedy continuations (without the prompt), stopped at eos_id; KV-cached."""
    completions = generate(params, config, prompts, max_new_tokens=max_new_tokens, eos_id=eos_id,
                           batch_size=max(len(prompts), 1))
    return [c.tokens for c in completions]


@functools.partial(jax.jit, static_argnums=(1,))
def _next_tokens(params, config, tokens_NT, lengths_N):
    logits_NTV = model_lib.logits(params, config, tokens_NT)
    last_NV = jnp.take_along_axis(logits_NTV, (lengths_N - 1)[:, None, None], axis=1)[:, 0]
    return jnp.argmax(last_NV, axis=-1).astype(jnp.int32)


def greedy_generate_uncached(params, config: model_lib.ModelConfig, prompts: list[list[int]], *,
                             max_new_tokens: int, eos_id: int | None) -> list[list[int]]:
    """Greedy decoding by recomputation: every token re-runs the whole [N, T] buffer.

    The causal mask makes the logits at position t depend only on tokens <= t, so
    right-padding is harmless. O(T) full forwards: the oracle for the cached path.
    """
    longest = max(len(p) for p in prompts)
    width = min(longest + max_new_tokens, config.max_seq_len)
    if longest >= width:
        raise ValueError(f"a prompt of {longest} tokens leaves no room under "
                         f"ModelConfig.max_seq_len={config.max_seq_len}.")
    tokens = np.zeros((len(prompts), width), np.int32)
    lengths = np.array([len(p) for p in prompts], np.int32)
    for i, p in enumerate(prompts):
        tokens[i, :len(p)] = p
    done = np.zeros(len(prompts), bool)
    outputs = [[] for _ in prompts]
    for _ in range(width - longest):
        nxt = np.asarray(_next_tokens(params, config, tokens, lengths))
        for i in np.flatnonzero(~done):
            if eos_id is not None and nxt[i] == eos_id:
                done[i] = True
                continue
            outputs[i].append(int(nxt[i]))
            tokens[i, lengths[i]] = nxt[i]
            lengths[i] += 1
            done[i] |= lengths[i] >= width
        if done.all():
            break
    return outputs
