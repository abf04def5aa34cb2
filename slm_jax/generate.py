"""Batched greedy decoding by recomputation (no KV cache yet).

Each new token re-runs the forward pass over a fixed [N, T] buffer; the
causal mask makes the logits at position t depend only on tokens <= t, so
right-padding is harmless. Cost is O(T) forwards of the whole buffer: fine for
the small models of the demo experiment, not for 7B serving.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from slm_jax import model as model_lib


@functools.partial(jax.jit, static_argnums=(1,))
def _next_tokens(params, config, tokens_NT, lengths_N):
    logits_NTV = model_lib.logits(params, config, tokens_NT)
    last_NV = jnp.take_along_axis(logits_NTV, (lengths_N - 1)[:, None, None], axis=1)[:, 0]
    return jnp.argmax(last_NV, axis=-1).astype(jnp.int32)


def greedy_generate(params, config: model_lib.ModelConfig, prompts: list[list[int]], *,
                    max_new_tokens: int, eos_id: int | None) -> list[list[int]]:
    """Greedy continuations (without the prompt), stopped at eos_id."""
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
