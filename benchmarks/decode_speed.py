"""Greedy decoding speed with the KV cache vs by recomputation (no cache).

    python benchmarks/decode_speed.py [--gin_file gin/models/small.gin] [--batch 8]
        [--prompt_len 32] [--new_tokens 128] [--repeats 2]

Random params, random prompts of `prompt_len` tokens, no EOS, so every row decodes
exactly `new_tokens` tokens. Each path is run once to compile, then timed `repeats`
times (best kept). Prints one JSON line: tokens/s of each path and the speedup.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def load_model(gin_file: str):
    import gin

    from slm_jax import model as model_lib
    gin.parse_config_file(os.path.join(REPO, gin_file) if not os.path.exists(gin_file)
                          else gin_file)
    return model_lib.ModelConfig()


def best_time(fn, repeats: int) -> float:
    fn()  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gin_file", default="gin/models/small.gin")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt_len", type=int, default=32)
    parser.add_argument("--new_tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)

    import jax
    import numpy as np

    from slm_jax import model as model_lib
    from slm_jax.model.generate import Generator, greedy_generate_uncached

    config = load_model(args.gin_file)
    params = model_lib.init_params(config, jax.random.key(0))
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, config.vocab_size, args.prompt_len).tolist()
               for _ in range(args.batch)]
    generator = Generator(config, batch_size=args.batch)
    outputs = {}

    def cached():
        outputs["cached"] = [c.tokens for c in generator.generate(
            params, prompts, max_new_tokens=args.new_tokens)]

    def uncached():
        outputs["uncached"] = greedy_generate_uncached(params, config, prompts,
                                                       max_new_tokens=args.new_tokens, eos_id=None)

    tokens = args.batch * args.new_tokens
    t_cached, t_uncached = best_time(cached, args.repeats), best_time(uncached, args.repeats)
    result = {"model": args.gin_file, "params": model_lib.count_params(config),
              "batch": args.batch, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
              "device": jax.devices()[0].device_kind,
              "cached_tokens_per_s": round(tokens / t_cached, 1),
              "uncached_tokens_per_s": round(tokens / t_uncached, 1),
              "speedup": round(t_uncached / t_cached, 2),
              "same_tokens": outputs["cached"] == outputs["uncached"]}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
