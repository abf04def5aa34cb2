"""The TPU-compiler tests (tests/tpu/: slm_jax/trainer/fit.py, parallel/topology.py, the
mesh's platform) in a pytest process of their own: libtpu, once initialised, stays in its
process, and the rest of the suite runs without it, as the jobs other than `compile` do."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_tpu_compiler_tests_pass_in_a_process_of_their_own():
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/tpu", "-p", "no:cacheprovider"],
        cwd=REPO, env={**os.environ, "SLM_JAX_TPU_TESTS": "1"}, capture_output=True, text=True,
        timeout=1500)
    print(result.stdout[-3000:])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "failed" not in result.stdout
