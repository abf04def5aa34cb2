"""Mesh and logical rules (slm_jax/parallel/sharding.py): mesh shapes, logical names onto
mesh axes, indivisible axes kept replicated."""

import re

import jax
import pytest
from jax.sharding import PartitionSpec as P

from slm_jax import model as model_lib
from slm_jax.cli_errors import with_flags
from slm_jax.parallel import sharding

TINY = model_lib.ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                             mlp_dim=64, max_seq_len=32)


@pytest.mark.parametrize("config, shape", [
    (sharding.MeshConfig(), (8, 1, 1)),
    (sharding.MeshConfig(data=-1, fsdp=4), (2, 4, 1)),
    (sharding.MeshConfig(data=2, fsdp=2, tensor=-1), (2, 2, 2)),
])
def test_mesh_shape_fills_the_minus_one_axis(config, shape):
    assert config.shape(8) == shape
    mesh = sharding.make_mesh(config)
    assert tuple(mesh.shape[a] for a in sharding.MESH_AXES) == shape
    assert sharding.data_parallel_size(mesh) == shape[0] * shape[1]


@pytest.mark.parametrize("config, message", [
    (sharding.MeshConfig(data=-1, fsdp=-1), "at most one -1"),
    (sharding.MeshConfig(data=0), "positive sizes"),
    (sharding.MeshConfig(data=-1, fsdp=3), "does not divide the 8 devices"),
    (sharding.MeshConfig(data=2, fsdp=2, tensor=1), "uses 4 devices but 8"),
])
def test_bad_mesh_names_the_binding(config, message):
    with pytest.raises(ValueError, match=message):
        config.shape(8)


def test_params_fsdp_sharded_and_split_over_tensor():
    mesh = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=4, tensor=2))
    shardings = sharding.param_shardings(TINY, mesh)
    embed = shardings["embed"]["embedding"].spec           # [vocab, embed]
    assert embed == P("tensor", "fsdp")
    q = shardings["layers_0"]["attention"]["q_proj"].spec   # [embed, q_heads, head_dim]
    assert q == P("fsdp", "tensor", None)
    assert shardings["final_norm"]["scale"].spec == P(None)


def test_an_axis_the_mesh_does_not_divide_stays_replicated():
    mesh = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=8))
    abstract = {"w": jax.ShapeDtypeStruct((12, 16), "float32")}
    got = sharding.logical_to_shardings({"w": P("embed", "mlp")}, abstract, mesh)
    assert got["w"].spec == P(None, None)   # 12 is not a multiple of fsdp=8; mlp -> tensor=1
    abstract = {"w": jax.ShapeDtypeStruct((16, 12), "float32")}
    assert sharding.logical_to_shardings({"w": P("embed", "mlp")}, abstract, mesh)["w"].spec \
        == P("fsdp", None)


def test_a_mesh_without_batch_axes_counts_one():
    assert sharding.data_parallel_size(jax.make_mesh((8,), ("tensor",))) == 1
    assert sharding.batch_sharding(sharding.make_mesh(sharding.MeshConfig())).spec == \
        P(sharding.BATCH_AXES)


# --- multislice: the data axis spans slices, everything else stays inside one ---------------

class SliceDevice:
    """A CPU device that says which slice it is in, as TPU devices of a multislice job do."""

    def __init__(self, device, slice_index):
        self._device, self.slice_index = device, slice_index

    def __getattr__(self, name):
        return getattr(self._device, name)

    def __repr__(self):
        return f"slice{self.slice_index}:{self._device.id}"


@pytest.mark.parametrize("config, per_slice, total", [
    (sharding.MeshConfig(num_slices=2), (4, 1, 1), (8, 1, 1)),
    (sharding.MeshConfig(data=1, fsdp=-1, num_slices=2), (1, 4, 1), (2, 4, 1)),
    (sharding.MeshConfig(data=1, fsdp=2, tensor=2, num_slices=2), (1, 2, 2), (2, 2, 2)),
    (sharding.MeshConfig(data=-1, fsdp=2, num_slices=4), (1, 2, 1), (4, 2, 1)),
])
def test_multislice_shapes_repeat_the_slice_mesh_along_data(config, per_slice, total):
    assert config.slice_shape(8) == per_slice
    assert config.shape(8) == total


def test_multislice_mesh_keeps_fsdp_and_tensor_inside_a_slice():
    """8 CPU devices as 2 slices of 4 (consecutive devices, having no slice_index)."""
    config = sharding.MeshConfig(data=1, fsdp=2, tensor=2, num_slices=2)
    mesh = sharding.make_mesh(config)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    ids = [[d.id for d in mesh.devices[i].flat] for i in range(2)]
    assert ids == [[0, 1, 2, 3], [4, 5, 6, 7]]     # data index i <-> slice i
    assert sharding.batch_sharding(mesh).spec == P(sharding.BATCH_AXES)
    assert sharding.data_parallel_size(mesh) == 4


def test_multislice_groups_devices_by_slice_index():
    """Devices carrying slice_index (TPU) go through jax's create_hybrid_device_mesh,
    grouped by their slice, not by their position in the list."""
    cpus = jax.devices()
    devices = [SliceDevice(d, 1 - d.id // 4) for d in cpus]   # the first four are slice 1
    grid = sharding.multislice_device_grid(sharding.MeshConfig(data=1, fsdp=-1, num_slices=2),
                                                 devices)
    assert grid.shape == (2, 4, 1)
    assert [[d.slice_index for d in grid[i].flat] for i in range(2)] == [[0] * 4, [1] * 4]
    assert sorted(d.id for d in grid[0].flat) == [4, 5, 6, 7]


@pytest.mark.parametrize("config, devices, message", [
    (sharding.MeshConfig(num_slices=3), None, r"num_slices=3 does not divide the 8 devices"),
    (sharding.MeshConfig(num_slices=0), None, r"num_slices=0 must be an int >= 1"),
    (sharding.MeshConfig(fsdp=8, num_slices=2), None,
     r"does not divide the 4 devices of a slice"),
    (sharding.MeshConfig(num_slices=4), "two slices",
     r"num_slices=4 but the devices belong to 2 slices; set MeshConfig.num_slices=2"),
])
def test_bad_multislice_config_names_the_binding(config, devices, message):
    if devices == "two slices":
        devices = [SliceDevice(d, d.id // 4) for d in jax.devices()]
    with pytest.raises(ValueError, match=message) as error:
        if devices is None:
            sharding.make_mesh(config)
        else:
            sharding.multislice_device_grid(config, devices)
    # The command line (slm_jax/main.py) prints the fix as a flag.
    assert re.search(r"; (set|change) --gin\.MeshConfig\.", with_flags(str(error.value), "--gin."))
