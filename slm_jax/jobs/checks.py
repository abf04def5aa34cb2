"""Checks every job runs on its configs before touching anything, each naming the gin
binding to change."""

from __future__ import annotations

from slm_jax import model as model_lib


def check_context(data, *models: model_lib.ModelConfig) -> None:
    """The packed rows fit every model's context."""
    limit = min(m.max_seq_len for m in models)
    if data.seq_len > limit:
        raise ValueError(
            f"DataConfig.seq_len={data.seq_len} is longer than ModelConfig.max_seq_len={limit}; "
            "lower --gin.DataConfig.seq_len or raise the model's maximum.")


def check_batch(data, runtime, grad_accum: int = 1) -> None:
    """Each micro-batch splits evenly over the data-parallel devices."""
    dp = runtime.data_parallel_size
    if grad_accum < 1 or data.global_batch_size % grad_accum:
        raise ValueError(f"DataConfig.global_batch_size={data.global_batch_size} is not divisible "
                         f"by train.grad_accum={grad_accum}; change --gin.train.grad_accum.")
    micro = data.global_batch_size // grad_accum
    if micro % dp:
        accum = (f" / train.grad_accum={grad_accum}" if grad_accum > 1 else "")
        raise ValueError(
            f"micro-batch of {micro} sequences (DataConfig.global_batch_size="
            f"{data.global_batch_size}{accum}) is not divisible by the data-parallel size {dp} "
            f"(MeshConfig data x fsdp); set --gin.DataConfig.global_batch_size to a multiple of "
            f"{dp * grad_accum} or change --gin.MeshConfig.data/fsdp.")
