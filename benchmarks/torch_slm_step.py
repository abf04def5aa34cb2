"""The SLM step written the usual way in PyTorch + transformers, for comparison.

    pip install -r requirements-test.txt   # torch (CPU) and transformers
    python benchmarks/torch_slm_step.py --batch 8 --seq_len 512

A frozen `LlamaForCausalLM` reference (no grad), per-token cross-entropy,
`torch.topk` over all tokens of the batch, masked mean, AdamW. Shapes default
to gin/bench/cpu_small.gin (fp32). Prints one JSON line per mode, with the
same keys as `python -m slm_jax.bench` where they apply.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM


def llama(args) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.d_model,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.kv_heads, intermediate_size=args.mlp,
                         max_position_embeddings=args.seq_len, tie_word_embeddings=False,
                         attn_implementation="sdpa")
    return LlamaForCausalLM(config).float()


def per_token_loss(model, inputs, targets):
    logits = model(input_ids=inputs).logits
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")


def make_step(mode: str, student, reference, optimizer, ratio: float):
    def step(inputs, targets):
        loss = per_token_loss(student, inputs, targets)
        if mode == "slm_online":
            with torch.no_grad():
                ref_loss = per_token_loss(reference, inputs, targets).float()
            excess = loss.detach() - ref_loss
            k = max(1, int(ratio * excess.numel() + 0.5))
            mask = torch.zeros_like(excess)
            mask[torch.topk(excess, k).indices] = 1.0
            objective = (mask * loss).sum() / mask.sum()
        else:
            objective = loss.mean()
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        return objective.item()
    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in [("batch", 8), ("seq_len", 512), ("vocab", 8192), ("d_model", 512),
                          ("layers", 8), ("heads", 8), ("kv_heads", 4), ("mlp", 1408),
                          ("warmup_steps", 2), ("timed_steps", 5)]:
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--ratio", type=float, default=0.6)
    parser.add_argument("--modes", default="clm,slm_online")
    parser.add_argument("--reference_dtype", default="float32", choices=["float32", "bfloat16"],
                        help="dtype of the frozen reference (the usual way: the student's, fp32)")
    args = parser.parse_args()
    torch.manual_seed(0)
    student = llama(args)
    reference = llama(args).to(getattr(torch, args.reference_dtype)).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4, weight_decay=0.1)
    inputs = torch.randint(3, args.vocab, (args.batch, args.seq_len))
    targets = torch.randint(3, args.vocab, (args.batch, args.seq_len))
    tokens = args.batch * args.seq_len
    results = []
    for mode in args.modes.split(","):
        step = make_step(mode, student, reference, optimizer, args.ratio)
        for _ in range(args.warmup_steps):
            step(inputs, targets)
        times = []
        for _ in range(args.timed_steps):
            start = time.perf_counter()
            step(inputs, targets)
            times.append(time.perf_counter() - start)
        step_s = statistics.median(times)
        results.append({"mode": mode, "framework": "torch", "step_s": step_s,
                        "tokens_per_s": tokens / step_s, "batch_tokens": tokens,
                        "threads": torch.get_num_threads(), "torch": torch.__version__,
                        "reference_dtype": args.reference_dtype,
                        "step_times_s": [round(t, 3) for t in times]})
    for r in results:
        r["ratio_to_clm"] = r["step_s"] / results[0]["step_s"]
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
