"""The job registry (slm_jax/jobs/registry.py): `run.job` picks a job; every config is a
gin configurable once the registry is imported."""

import gin
import pytest

from slm_jax.jobs import registry


@pytest.fixture(autouse=True)
def fresh_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def test_every_job_and_config_is_configurable():
    assert set(registry.JOBS) == {"train", "score", "demo", "experiment", "bench", "analyze",
                                  "eval", "compile", "sft"}
    bindings = "\n".join(f"run.job = '{job}'" for job in registry.JOBS) + """
ReferenceConfig.dtype = 'float32'
ModelConfig.d_model = 64
DataConfig.seq_len = 32
SelectionConfig.ratio = 0.5
OptimizerConfig.learning_rate = 1e-3
MeshConfig.data = -1
CheckpointConfig.keep = 1
HeldOutLossEval.num_batches = 2
FewShotEvalConfig.num_problems = 2
compile.topology = 'v5e:2x2'
initialize_distributed.num_processes = 1
"""
    gin.parse_config(bindings)  # an unknown name would raise


def test_run_dispatches_and_refuses_unknown_jobs(monkeypatch):
    monkeypatch.setitem(registry.JOBS, "train", lambda: "trained")
    assert registry.run("train") == "trained"
    with pytest.raises(ValueError, match=r"run.job='nope' is not a job; choose one of"):
        registry.run("nope")


def test_compilation_cache_dir_keeps_compiled_programs(tmp_path):
    """`run.compilation_cache_dir`: a job's compiled programs land there (a fresh process:
    JAX decides once per process whether the cache is on)."""
    import os
    import subprocess
    import sys
    import textwrap
    script = textwrap.dedent(f"""
        import jax, jax.numpy as jnp
        from slm_jax.jobs import registry
        registry.JOBS["square"] = lambda: float(jax.jit(lambda x: jnp.sin(x) ** 2)(1.0))
        print(registry.run("square", compilation_cache_dir={str(tmp_path / 'cache')!r}))
    """)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=repo, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr
    assert os.listdir(tmp_path / "cache")
