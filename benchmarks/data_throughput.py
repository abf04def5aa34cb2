"""Data pipeline throughput: packed LM batches per second from TFRecords, on one core.

    python benchmarks/data_throughput.py [--seq_len 2048] [--batches 40] [--cores 1]

Generates the embedded demo corpus (web split) and its SentencePiece model in a
temp dir, pins the process to `--cores` cores, and times the resumable stream
order (`pipeline.host_streams`: read, tokenise, pack, LM view) from the start.
seqio packs `seq_len + 1` chunks at a time, so one block serves hundreds of
batches: `--batches` must span several blocks (the default spans ~3 at batch 8). Prints one JSON line with tokens/s and tokens/s per core, and the
training step consumption it would feed (`--step_tokens_per_s_per_host`).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq_len", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=800)
    parser.add_argument("--cores", type=int, default=1)
    parser.add_argument("--vocab_size", type=int, default=2048)
    # TinyLlama-1.1B SLM on 64 v5p chips (16 hosts): 1,048,576 tokens / 0.644 s / 16,
    # from benchmarks/tpu_estimate.py.
    parser.add_argument("--step_tokens_per_s_per_host", type=float, default=1_048_576 / 0.644 / 16)
    args = parser.parse_args()
    os.sched_setaffinity(0, set(range(args.cores)))
    from slm_jax.data import pipeline  # after pinning: TF sizes its thread pools at import
    from slm_jax.jobs.demo import prepare_demo_data

    with tempfile.TemporaryDirectory() as work_dir:
        corpus, data_on = prepare_demo_data(work_dir, vocab_size=args.vocab_size, seed=0)
        config = data_on(corpus.web_tfrecord, seq_len=args.seq_len, global_batch_size=args.batch)
        batches = pipeline.host_streams(config)
        start = time.perf_counter()
        first = next(batches)
        first_s = time.perf_counter() - start
        tokens, real = int(first["loss_weights"].size), float(first["loss_weights"].sum())
        for _ in range(args.batches - 1):
            weights = next(batches)["loss_weights"]
            tokens, real = tokens + int(weights.size), real + float(weights.sum())
        elapsed = time.perf_counter() - start
        real /= tokens
    rate = tokens / elapsed
    print(json.dumps({
        "seq_len": args.seq_len, "cores": args.cores, "batches": args.batches,
        "tokens_per_s": rate, "tokens_per_s_per_core": rate / args.cores,
        "first_batch_s": first_s, "non_padding_share": real,
        "step_tokens_per_s_per_host": args.step_tokens_per_s_per_host,
        "cores_needed_per_host": args.step_tokens_per_s_per_host / (rate / args.cores)}))


if __name__ == "__main__":
    main()
