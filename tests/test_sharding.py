"""Mesh and logical rules (slm_jax/parallel/sharding.py): mesh shapes, logical names onto
mesh axes, indivisible axes kept replicated."""

import jax
import pytest
from jax.sharding import PartitionSpec as P

from slm_jax import model as model_lib
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
