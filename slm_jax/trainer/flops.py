"""Model FLOPs per trained token: one formula for the bench, the train log's MFU and the
TPU estimate."""

from __future__ import annotations

from slm_jax import model as model_lib


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
