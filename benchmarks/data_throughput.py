"""Data pipeline throughput: packed LM batches per second from TFRecords, on one core.

    python benchmarks/data_throughput.py [--seq_len 2048] [--batches 40] [--cores 1]
        [--hf_tokenizer DIR_OR_TOKENIZER_JSON]

Generates the embedded demo corpus (web split) and its SentencePiece model in a
temp dir, pins the process to `--cores` cores, and times the resumable stream
order (`pipeline.host_streams`: read, tokenise, pack, LM view) from the start.
seqio packs `seq_len + 1` chunks at a time, so one block serves hundreds of
batches: `--batches` must span several blocks (the default spans ~3 at batch 8). Prints one JSON line with tokens/s and tokens/s per core, and the
training step consumption it would feed (`--step_tokens_per_s_per_host`).

A second JSON line compares tokenisation alone (tokens/s out of the seqio task:
read, tokenise, BOS/EOS) for the SentencePiece model and a byte-level BPE
tokenizer.json of the same vocabulary size trained on the same text, with the
ratio; `--hf_tokenizer` adds a real Hugging Face tokenizer (e.g. SmolLM2's).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


def train_byte_level_bpe(text_jsonl: str, vocab_size: int, out_dir: str) -> str:
    """A GPT-2-style byte-level BPE tokenizer.json (+ config naming its EOS) in out_dir."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    with open(text_jsonl, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    os.makedirs(out_dir, exist_ok=True)
    bpe.save(os.path.join(out_dir, "tokenizer.json"))
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"eos_token": "<|endoftext|>"}, f)
    return out_dir


def tokenisation_rate(name: str, tfrecord: str, vocab_path: str, repeats: int = 2) -> dict:
    """Tokens/s out of the seqio task (read, tokenise, BOS/EOS) over one file, best of
    `repeats` passes; also the characters per token."""
    import numpy as np
    import tensorflow as tf
    from slm_jax.data import tasks

    task = tasks.register_text_task(f"bench_tokenise_{name}", tfrecord, vocab_path,
                                    shuffle_files=False)
    lengths = task.get_dataset(sequence_length=None, shuffle=False).map(
        lambda ex: tf.size(ex["targets"])).batch(1024)
    texts = tf.data.TFRecordDataset(tfrecord).map(lambda r: tf.strings.length(
        tf.io.parse_single_example(r, {"text": tf.io.FixedLenFeature([], tf.string)})["text"],
        unit="UTF8_CHAR"))
    chars = int(sum(texts.as_numpy_iterator()))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        tokens = int(sum(np.sum(b) for b in lengths.as_numpy_iterator()))
        best = min(best, time.perf_counter() - start)
    return {"tokens": tokens, "tokens_per_s": tokens / best, "chars_per_s": chars / best,
            "chars_per_token": chars / tokens}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq_len", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=800)
    parser.add_argument("--cores", type=int, default=1)
    parser.add_argument("--vocab_size", type=int, default=2048)
    parser.add_argument("--hf_tokenizer", default=None,
                        help="also time this tokenizer.json (or its directory)")
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
        sentencepiece = tokenisation_rate("sentencepiece", corpus.web_tfrecord, config.vocab_path)
        bpe_dir = train_byte_level_bpe(corpus.web_jsonl, args.vocab_size,
                                       os.path.join(work_dir, "bpe"))
        byte_level_bpe = tokenisation_rate("byte_level_bpe", corpus.web_tfrecord, bpe_dir)
        real_hf = args.hf_tokenizer and tokenisation_rate("hf", corpus.web_tfrecord,
                                                          args.hf_tokenizer)
    rate = tokens / elapsed
    print(json.dumps({
        "seq_len": args.seq_len, "cores": args.cores, "batches": args.batches,
        "tokens_per_s": rate, "tokens_per_s_per_core": rate / args.cores,
        "first_batch_s": first_s, "non_padding_share": real,
        "step_tokens_per_s_per_host": args.step_tokens_per_s_per_host,
        "cores_needed_per_host": args.step_tokens_per_s_per_host / (rate / args.cores)}))
    def ratio(key):
        return byte_level_bpe[key] / sentencepiece[key]

    rates = {f"sentencepiece_{args.vocab_size}": sentencepiece,
             f"hf_byte_level_bpe_{args.vocab_size}": byte_level_bpe,
             **({f"hf {args.hf_tokenizer}": real_hf} if real_hf else {})}
    print(json.dumps({"tokenisation_tokens_per_s_per_core": {
        name: {**r, "tokens_per_s": r["tokens_per_s"] / args.cores,
               "chars_per_s": r["chars_per_s"] / args.cores} for name, r in rates.items()},
        "hf_over_sentencepiece_tokens_per_s": ratio("tokens_per_s"),
        "hf_over_sentencepiece_chars_per_s": ratio("chars_per_s")}))


if __name__ == "__main__":
    main()
