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


def test_block_causal_kernels_skip_the_key_blocks_past_the_diagonal():
    assert flops.attended_keys("xla", 256) == 256 / 2 * (1 + 128 / 256)      # 2 query blocks
    assert flops.attended_keys("splash", 2048) == 1280                        # 4 blocks of 512
    assert flops.attended_keys("dot_product_attention", 256) == 256          # a masked softmax
    assert flops.attended_keys("xla", 200) == 200   # no whole blocks: counted as computed


def test_a_train_program_counts_remat_recompute_and_the_online_reference():
    n_matmul = model_lib.count_params(CFG) - 100 * 8
    per_layer = model_lib.count_params(dataclasses.replace(CFG, n_layers=2)) - \
        model_lib.count_params(CFG)
    unit = 2 * 1 * 2 * 4 * flops.attended_keys("xla", 16)  # one matmul over the attended pairs
    plain = flops.train_program_flops(CFG, 16, "xla")
    assert plain == 6 * n_matmul + (2 + 5) * unit
    full = flops.train_program_flops(dataclasses.replace(CFG, remat="full"), 16, "xla")
    assert full - plain == 2 * per_layer + 2 * unit
    dots = flops.train_program_flops(dataclasses.replace(CFG, remat="dots"), 16, "xla")
    assert dots - plain == 2 * unit                  # only attention's batched matmuls rerun
    online = flops.train_program_flops(CFG, 16, "xla", reference=CFG)
    assert online - plain == flops.forward_program_flops(CFG, 16, "xla") == 2 * n_matmul + 2 * unit
    # XLA cannot count inside splash's Pallas kernels: that part is reported apart
    assert flops.train_program_flops(CFG, 16, "xla", only_pallas=True) == 0
    splash_unit = 2 * 1 * 2 * 4 * flops.attended_keys("splash", 16)
    assert flops.train_program_flops(CFG, 16, "splash", only_pallas=True) == (2 + 7) * splash_unit
