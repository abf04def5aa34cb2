"""Model FLOPs per trained token: one formula for the bench, the train log's MFU and the
TPU estimate."""

from __future__ import annotations

import dataclasses

from slm_jax import model as model_lib
from slm_jax.model import attention


def flops_per_token(config: model_lib.ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token of one model: 6N for the matmul params plus
    causal attention (QK^T and AV, 2 matmuls, half the positions masked)."""
    n = model_lib.count_params(config)
    if not config.tie_embeddings:
        n -= config.vocab_size * config.d_model  # the input embedding is a gather, not a matmul
    attn = 2 * 2 * config.n_layers * config.n_heads * config.resolved_head_dim * seq_len / 2
    return 6 * n + 3 * attn


def forward_flops_per_token(config, seq_len) -> float:
    return flops_per_token(config, seq_len) / 3


def slm_step_flops_per_token(student: model_lib.ModelConfig, reference, seq_len: int) -> float:
    """Model FLOPs of one trained token: the student's step plus, when a reference runs in
    the step, the reference's forward (its own ModelConfig, which may be smaller)."""
    return flops_per_token(student, seq_len) + (
        forward_flops_per_token(reference, seq_len) if reference is not None else 0.0)


# Matmuls over the attended (query, key) pairs each kernel runs: (forward, backward).
# xla: FlashAttention-2's backward recomputes the scores (S, dV, dP, dQ, dK); splash's
# dq kernel (S, dP, dQ) and dkv kernel (S, dP, dV, dK) each recompute them; autodiff of a
# masked softmax (dot_product_attention off cuDNN) saves the probabilities (dV, dP, dQ, dK).
ATTENTION_MATMULS = {"xla": (2, 5), "splash": (2, 7), "dot_product_attention": (2, 4)}
PALLAS_KERNELS = ("splash",)


def attended_keys(kernel: str, seq_len: int) -> float:
    """Keys per query the kernel computes scores for: block-causal kernels skip the key
    blocks past the diagonal (T/2 * (1 + block/T)), a masked softmax computes them all."""
    block = {"xla": attention.BLOCK, "splash": min(512, seq_len)}.get(kernel)
    if block is None or seq_len % block:
        return float(seq_len)
    return seq_len / 2 * (1 + block / seq_len)


def _matmul_params(config: model_lib.ModelConfig) -> tuple[int, int]:
    """(params in matmuls, params of one layer): the input embedding is a gather."""
    n = model_lib.count_params(config)
    if not config.tie_embeddings:
        n -= config.vocab_size * config.d_model
    per_layer = (model_lib.count_params(dataclasses.replace(config, n_layers=2))
                 - model_lib.count_params(dataclasses.replace(config, n_layers=1)))
    return n, per_layer


def _attention_flops(config, seq_len: int, kernel: str, matmuls: int) -> float:
    keys = attended_keys(kernel, seq_len)
    return 2 * matmuls * config.n_layers * config.n_heads * config.resolved_head_dim * keys


def forward_program_flops(config, seq_len: int, kernel: str, only_pallas: bool = False) -> float:
    """FLOPs per token a forward-only program (held-out eval, score) computes;
    `only_pallas`: just the part inside Pallas kernels (splash), which XLA cannot count."""
    n, _ = _matmul_params(config)
    attn = _attention_flops(config, seq_len, kernel, ATTENTION_MATMULS[kernel][0])
    if only_pallas:
        return attn if kernel in PALLAS_KERNELS else 0.0
    return 2 * n + attn


def train_program_flops(config, seq_len: int, kernel: str, reference=None,
                        reference_kernel: str | None = None, only_pallas: bool = False) -> float:
    """FLOPs per token the train step computes: the student's forward and backward (6N),
    what its remat policy recomputes ("full": every layer's forward; "dots": attention,
    whose batched matmuls it does not save) and the online reference's forward.
    `only_pallas`: just the part inside Pallas kernels (splash)."""
    n, per_layer = _matmul_params(config)
    fwd, bwd = ATTENTION_MATMULS[kernel]
    recompute = {"none": 0, "dots": fwd, "full": fwd}[config.remat]
    attn = _attention_flops(config, seq_len, kernel, fwd + bwd + recompute)
    reference_flops = 0.0 if reference is None else forward_program_flops(
        reference, seq_len, reference_kernel or kernel, only_pallas)
    if only_pallas:
        return (attn if kernel in PALLAS_KERNELS else 0.0) + reference_flops
    total = 6 * n + attn + reference_flops
    if config.remat == "full":
        total += 2 * per_layer * config.n_layers
    return total
