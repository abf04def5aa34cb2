"""On-paper step time, communication and wall-clock of the Rho-1 runs on TPU v5p.

    python benchmarks/tpu_estimate.py [--mfu 0.5] [--ici_efficiency 0.5]

FLOPs come from the same count the bench uses (slm_jax.trainer.flops:
6N + attention for the student, 2N + attention for the online reference).
Chip figures are Google's published v5p numbers; the MFU and the share of
the ICI bandwidth a collective achieves are assumptions, printed with the
result (docs/performance.md says where this is weakest).
"""

from __future__ import annotations

import argparse

import gin

from slm_jax import model as model_lib
from slm_jax.trainer import flops

V5P_PEAK_BF16 = 459e12  # FLOP/s per chip
V5P_ICI_BYTES = 4800e9 / 8  # 4,800 Gbps of inter-chip interconnect per chip
V5P_HBM_BYTES = 95e9

RUNS = [  # (name, model gin, chips, global tokens per step, seq_len, steps for 15B tokens)
    ("TinyLlama-1.1B SLM k=60%", "gin/models/tinyllama_1b.gin", 64, 512 * 2048, 2048, 14305),
    ("TinyLlama-1.1B SLM k=60%", "gin/models/tinyllama_1b.gin", 256, 512 * 2048, 2048, 14305),
    ("Mistral-7B SLM k=70%", "gin/models/mistral_7b.gin", 64, 512 * 2048, 2048, 14305),
    ("Mistral-7B SLM k=70%", "gin/models/mistral_7b.gin", 256, 512 * 2048, 2048, 14305),
]


def model_config(gin_file: str) -> model_lib.ModelConfig:
    gin.clear_config()
    gin.parse_config_file(gin_file)
    return model_lib.ModelConfig()


def estimate(config, chips: int, tokens: int, seq_len: int, steps: int, *, mfu: float,
             ici_efficiency: float, ref_replicated: bool) -> dict:
    n = model_lib.count_params(config)
    student = flops.flops_per_token(config, seq_len)
    reference = flops.forward_flops_per_token(config, seq_len)
    step_flops = (student + reference) * tokens
    compute_s = step_flops / (chips * V5P_PEAK_BF16 * mfu)
    # FSDP over all chips: gather bf16 params for the forward and again for the
    # rematerialised backward, reduce-scatter fp32 gradients; each moves
    # (chips-1)/chips of the full size through every chip.
    share = (chips - 1) / chips
    student_bytes = share * (2 * n + 2 * n + 4 * n)
    reference_bytes = 0.0 if ref_replicated else share * 2 * n
    # Global top-k by bisection: 32 scalar all-reduces plus the tie cumsum
    # (one int32 per token, gathered) -- bytes, not gigabytes.
    select_bytes = 32 * 4 * 2 + 4 * tokens
    comm_bytes = student_bytes + reference_bytes + select_bytes
    comm_s = comm_bytes / (V5P_ICI_BYTES * ici_efficiency)
    step_s = max(compute_s, comm_s)  # XLA overlaps FSDP collectives with the layer compute
    tokens_per_chip = tokens / chips
    activations = (config.n_layers * tokens_per_chip * config.d_model * 2  # remat: layer inputs
                   + 2 * tokens_per_chip * config.mlp_dim * 4 * 2)  # one live layer, roughly
    memory = 16 * n / chips + (2 * n if ref_replicated else 2 * n / chips) + activations
    return {"params": n, "flops_per_step": step_flops, "compute_s": compute_s,
            "comm_gb_per_chip": comm_bytes / 1e9, "comm_s": comm_s, "step_s": step_s,
            "mfu": mfu * compute_s / step_s, "hours_15b": steps * step_s / 3600,
            "hbm_gb_per_chip": memory / 1e9, "select_mb": select_bytes / 1e6}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mfu", type=float, default=0.5)
    parser.add_argument("--ici_efficiency", type=float, default=0.5)
    args = parser.parse_args()
    print(f"assumed: MFU {args.mfu:.0%} of {V5P_PEAK_BF16 / 1e12:.0f} TFLOP/s bf16 per chip when "
          f"compute-bound; collectives at {args.ici_efficiency:.0%} of "
          f"{V5P_ICI_BYTES / 1e9:.0f} GB/s ICI per chip\n")
    print("| run | chips | reference | FLOPs/step | compute s | FSDP+select GB/chip | comm s | "
          "step s | MFU | HBM GB/chip | 15B tokens |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, gin_file, chips, tokens, seq_len, steps in RUNS:
        config = model_config(gin_file)
        for ref_replicated in (True, False):
            e = estimate(config, chips, tokens, seq_len, steps, mfu=args.mfu,
                         ici_efficiency=args.ici_efficiency, ref_replicated=ref_replicated)
            print(f"| {name} | {chips} | {'replicated' if ref_replicated else 'FSDP'} | "
                  f"{e['flops_per_step']:.2e} | {e['compute_s']:.3f} | {e['comm_gb_per_chip']:.1f} | "
                  f"{e['comm_s']:.3f} | {e['step_s']:.3f} | {e['mfu']:.0%} | "
                  f"{e['hbm_gb_per_chip']:.1f} | {e['hours_15b']:.1f} h |")


if __name__ == "__main__":
    main()
