"""slm_jax/parallel/topology.py without libtpu: names refused before libtpu is asked (the
rest, with libtpu, is tests/tpu/test_topology.py)."""

import pytest

from slm_jax.parallel import topology


@pytest.mark.parametrize("name", ["v9:2x2", "garbage", "v5p-128", ""])
def test_a_name_that_is_no_topology_is_one_clear_error(name):
    with pytest.raises(ValueError, match="is not a TPU topology .* e.g. v4:2x2x1"):
        topology.tpu_devices(name)
