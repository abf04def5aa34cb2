"""Peak temporary memory of the loss + its gradient: chunked vs plain cross-entropy.

    python benchmarks/ce_memory.py [--batch 8 --seq_len 2048 --d_model 2048 --vocab 32000]

Compiles (does not run) the value-and-gradient of the per-token loss for both
ways and prints XLA's temp-buffer sizes, as one JSON line. Defaults: TinyLlama's
hidden size and vocabulary, 8 x 2048 tokens per device.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp

from slm_jax.slm import losses


def plain_loss(hidden_BTD, unembed_DV, targets_BT):
    logits_BTV = jnp.einsum("btd,dv->btv", hidden_BTD, unembed_DV,
                            preferred_element_type=jnp.float32)
    log_probs_BTV = jax.nn.log_softmax(logits_BTV, axis=-1)
    return -jnp.take_along_axis(log_probs_BTV, targets_BT[..., None], axis=-1)[..., 0]


def temp_bytes(loss_fn, args) -> int:
    grad_fn = jax.jit(jax.value_and_grad(lambda h, w, y: loss_fn(h, w, y).mean(), argnums=(0, 1)))
    return grad_fn.lower(*args).compile().memory_analysis().temp_size_in_bytes


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in [("batch", 8), ("seq_len", 2048), ("d_model", 2048), ("vocab", 32000),
                          ("chunk_size", 1024)]:
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    shapes = [jax.ShapeDtypeStruct((args.batch, args.seq_len, args.d_model), args.dtype),
              jax.ShapeDtypeStruct((args.d_model, args.vocab), args.dtype),
              jax.ShapeDtypeStruct((args.batch, args.seq_len), jnp.int32)]
    chunked = temp_bytes(lambda h, w, y: losses.per_token_loss(h, w, y, chunk_size=args.chunk_size),
                         shapes)
    plain = temp_bytes(plain_loss, shapes)
    fp32_logits = args.batch * args.seq_len * args.vocab * 4
    print(json.dumps({**vars(args), "chunked_temp_bytes": chunked, "plain_temp_bytes": plain,
                      "plain_over_chunked": plain / chunked, "fp32_logits_bytes": fp32_logits}))


if __name__ == "__main__":
    main()
