"""The model: its config, the Llama-family decoder, its attention kernels and decoding.

The names most callers need are re-exported here (`from slm_jax import model as model_lib`).
"""

from slm_jax.model.config import ModelConfig, computing_in
from slm_jax.model.decoder import (Decoder, abstract_params, count_params, init_cache,
                                   init_params, logical_param_specs, logits, unembedding)

__all__ = ["Decoder", "ModelConfig", "abstract_params", "computing_in", "count_params",
           "init_cache", "init_params", "logical_param_specs", "logits", "unembedding"]
