"""slm_jax/trainer/fit.py without libtpu; what compiles for TPU is in tests/tpu/test_fit.py
(run by tests/test_tpu_compile.py in a process of its own)."""

import pytest

from slm_jax.trainer import fit


@pytest.mark.parametrize("message, needed, capacity", [
    ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
     "temporaries (22.55G) exceeds available HBM (15.75G).", 22.55, 15.75),
    ("RESOURCE_EXHAUSTED: Used 20.5G of 15.75G hbm. Exceeded hbm capacity by 4.75G.", 20.5, 15.75)])
def test_the_compilers_out_of_hbm_figures_are_read(message, needed, capacity):
    groups = [g for g in fit._NEEDED.search(message).groups() if g is not None]
    assert (float(groups[0]), float(groups[2])) == (needed, capacity)
