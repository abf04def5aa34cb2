"""Model FLOPs per token (slm_jax/trainer/flops.py)."""

import dataclasses

from slm_jax import model as model_lib
from slm_jax.trainer import flops

CFG = model_lib.ModelConfig(vocab_size=100, d_model=8, n_layers=1, n_heads=2, n_kv_heads=2,
                            mlp_dim=16, max_seq_len=16, dtype="float32")


def test_flops_per_token_counts_attention_and_excludes_the_embedding_gather():
    n_matmul = model_lib.count_params(CFG) - 100 * 8
    attn_fwd = 2 * 2 * 1 * 2 * 4 * 16 / 2
    assert flops.flops_per_token(CFG, 16) == 6 * n_matmul + 3 * attn_fwd


def test_slm_step_counts_the_references_own_forward():
    bigger = dataclasses.replace(CFG, d_model=16, mlp_dim=32)
    assert flops.slm_step_flops_per_token(CFG, None, 16) == flops.flops_per_token(CFG, 16)
    assert flops.slm_step_flops_per_token(CFG, bigger, 16) == (
        flops.flops_per_token(CFG, 16) + flops.flops_per_token(bigger, 16) / 3)
