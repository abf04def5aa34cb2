"""TPU slices that are not here (slm_jax/parallel/topology.py), from libtpu's descriptions."""

import pytest

from slm_jax.parallel import topology


def test_slices_have_the_chips_and_device_kinds_libtpu_reports():
    assert [d.device_kind for d in topology.tpu_devices("v5p:2x2x1")] == ["TPU v5"] * 4
    # megacore: one device per v4 chip, as TPU VMs run it (libtpu's default is two)
    assert len(topology.tpu_devices("v4:2x2x1")) == 4
    two = topology.tpu_devices("v6e:2x2", num_slices=2)
    assert [d.slice_index for d in two] == [0] * 4 + [1] * 4
    assert two[0].device_kind == "TPU v6 lite"


@pytest.mark.parametrize("name, says", [
    ("v9:2x2", "not a TPU topology"), ("v5e:3x3", "libtpu does not know this topology"),
    ("garbage", "not a TPU topology")])
def test_a_topology_libtpu_does_not_know_is_one_clear_error(name, says):
    with pytest.raises(ValueError, match=says):
        topology.tpu_devices(name)
