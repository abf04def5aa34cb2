"""Config checks shared by the jobs (slm_jax/jobs/checks.py), each naming the binding to change."""

import pytest

from slm_jax import model as model_lib
from slm_jax.data.pipeline import DataConfig
from slm_jax.jobs import checks
from slm_jax.parallel.runtime import Runtime

SMALL = model_lib.ModelConfig(vocab_size=64, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1,
                              mlp_dim=32, max_seq_len=64)


def data(**fields):
    return DataConfig(**{"file_pattern": "x", "vocab_path": "y", "seq_len": 64,
                         "global_batch_size": 16, **fields})


def test_context_must_fit_every_model():
    checks.check_context(data(), SMALL)
    short = model_lib.ModelConfig(**{**SMALL.__dict__, "max_seq_len": 32})
    with pytest.raises(ValueError, match=r"DataConfig.seq_len=64 is longer than "
                                         r"ModelConfig.max_seq_len=32; lower --gin.DataConfig"):
        checks.check_context(data(), SMALL, short)


def test_batch_must_split_over_data_parallel_devices_per_micro_batch():
    runtime = Runtime.from_config()  # 8 CPU devices, all data-parallel
    checks.check_batch(data(), runtime)
    checks.check_batch(data(), runtime, grad_accum=2)
    with pytest.raises(ValueError, match=r"micro-batch of 4 sequences .* / train.grad_accum=4\) "
                                         r"is not divisible by the data-parallel size 8 .*"
                                         r"multiple of 32"):
        checks.check_batch(data(), runtime, grad_accum=4)
    with pytest.raises(ValueError, match=r"not divisible by train.grad_accum=3"):
        checks.check_batch(data(), runtime, grad_accum=3)
    with pytest.raises(ValueError, match=r"global_batch_size=12\) is not divisible by the "
                                         r"data-parallel size 8"):
        checks.check_batch(data(global_batch_size=12), runtime)
