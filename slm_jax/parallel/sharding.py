"""Device mesh and logical-axis rules.

The model names every param and activation axis logically ("embed", "mlp",
"activation_batch", ...). One rule table maps those names onto the mesh axes
(data, fsdp, tensor): batch over data+fsdp, params FSDP-sharded over fsdp and
split over tensor where the model has a heads/mlp/vocab axis.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

DEFAULT_RULES = (
    # activations
    ("activation_batch", BATCH_AXES),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_head_dim", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    # params
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("norm", None),
    ("layers", None),
)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh shape (data, fsdp, tensor); one size may be -1 for "the rest".

    ``num_slices`` > 1 is a multislice job (TPU slices joined over the data-center
    network, DCN): the sizes then describe the mesh of one slice (its devices talk
    over the fast ICI links), and the data axis is repeated once per slice, so the
    global mesh is (num_slices * data, fsdp, tensor). Only the batch crosses slices;
    FSDP and tensor parallelism, which communicate every layer, stay inside one.
    """

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    rules: tuple = DEFAULT_RULES
    num_slices: int = 1  # slices of a multislice job; the data axis spans them

    def shape(self, num_devices: int) -> tuple[int, int, int]:
        """The global mesh shape over `num_devices` (all slices)."""
        data, fsdp, tensor = self.slice_shape(num_devices)
        return data * self.num_slices, fsdp, tensor

    def slice_shape(self, num_devices: int) -> tuple[int, int, int]:
        """The mesh shape inside one slice (the ICI mesh); all of it when num_slices is 1."""
        num_devices = self._devices_per_slice(num_devices)
        sizes = [self.data, self.fsdp, self.tensor]
        where = f"the {num_devices} devices" + (" of a slice" if self.num_slices > 1 else "")
        if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
            raise ValueError(
                f"MeshConfig (data={self.data}, fsdp={self.fsdp}, tensor={self.tensor}) "
                f"needs positive sizes with at most one -1; fix MeshConfig.data etc.")
        known = int(np.prod([s for s in sizes if s != -1]))
        if -1 in sizes:
            if num_devices % known:
                raise ValueError(
                    f"MeshConfig (data={self.data}, fsdp={self.fsdp}, tensor={self.tensor}) "
                    f"does not divide {where}: the fixed axes need a "
                    f"multiple of {known}; change MeshConfig.fsdp/tensor.")
            sizes[sizes.index(-1)] = num_devices // known
        if int(np.prod(sizes)) != num_devices:
            raise ValueError(
                f"MeshConfig (data={self.data}, fsdp={self.fsdp}, tensor={self.tensor}) "
                f"uses {int(np.prod(sizes))} devices but {num_devices} "
                f"{'per slice ' if self.num_slices > 1 else ''}are available; set "
                f"MeshConfig.data (or .fsdp, .tensor) to -1 or make the product {num_devices}.")
        return tuple(sizes)

    def _devices_per_slice(self, num_devices: int) -> int:
        slices = self.num_slices
        if isinstance(slices, bool) or not isinstance(slices, int) or slices < 1:
            raise ValueError(f"MeshConfig.num_slices={slices!r} must be an int >= 1; set "
                             "MeshConfig.num_slices to the number of TPU slices.")
        if num_devices % slices:
            raise ValueError(
                f"MeshConfig.num_slices={slices} does not divide the {num_devices} devices "
                "(every slice has the same number); set MeshConfig.num_slices to the "
                "number of slices the job runs on.")
        return num_devices // slices


def make_mesh(config: MeshConfig, devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: all, every host).

    With ``config.num_slices`` > 1 the data axis is slice-major: consecutive
    blocks of it are whole slices (see `multislice_device_grid`).
    """
    devices = jax.devices() if devices is None else list(devices)
    # Auto axes: XLA's sharding propagation places what the rules leave open.
    axis_types = (AxisType.Auto,) * len(MESH_AXES)
    if config.num_slices == 1:
        return jax.make_mesh(config.shape(len(devices)), MESH_AXES, axis_types=axis_types,
                             devices=devices)
    return Mesh(multislice_device_grid(config, devices), MESH_AXES, axis_types=axis_types)


def slices_of(devices, num_slices: int) -> list[list]:
    """The devices of each slice, in slice order.

    TPU devices of a multislice job carry ``slice_index``. Devices without it
    (CPU, GPU) have no slices; consecutive groups of ``len(devices) // num_slices``
    stand in for them. jax lists devices process by process, so on GPU a group is
    whole hosts whenever the hosts divide evenly into the slices, and on CPU this
    is what the tests use to check the layout.
    """
    if not all(hasattr(d, "slice_index") for d in devices):
        per_slice = len(devices) // num_slices
        return [list(devices[i * per_slice:(i + 1) * per_slice]) for i in range(num_slices)]
    found = sorted({d.slice_index for d in devices})
    if len(found) != num_slices:
        raise ValueError(
            f"MeshConfig.num_slices={num_slices} but the devices belong to {len(found)} "
            f"slice{'s' * (len(found) != 1)}; set MeshConfig.num_slices={len(found)}.")
    return [[d for d in devices if d.slice_index == s] for s in found]


def multislice_device_grid(config: MeshConfig, devices) -> np.ndarray:
    """Devices arranged as the global (data, fsdp, tensor) mesh of a multislice job.

    Each slice gets the ICI mesh `config.slice_shape`; the slices are stacked
    along the data axis (the DCN mesh is (num_slices, 1, 1)), so only the
    batch's gradient all-reduce crosses the data-center network.
    """
    devices = list(devices)
    ici = config.slice_shape(len(devices))
    groups = slices_of(devices, config.num_slices)  # a wrong slice count fails here, in one line
    if all(hasattr(d, "slice_index") for d in devices):
        return mesh_utils.create_hybrid_device_mesh(ici, (config.num_slices, 1, 1), devices,
                                                    allow_split_physical_axes=True)
    return np.concatenate([mesh_utils.create_device_mesh(ici, group,
                                                         allow_split_physical_axes=True)
                           for group in groups], axis=0)


def data_parallel_size(mesh: Mesh) -> int:
    """Devices the batch is split over (a mesh without a batch axis counts it as 1)."""
    return int(np.prod([mesh.shape[a] for a in BATCH_AXES if a in mesh.shape]))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis over data+fsdp, the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _mesh_axes_for(logical_spec: P, shape, mesh: Mesh, rules) -> P:
    """Logical spec -> mesh spec; a dim the mesh axes don't divide stays replicated."""
    rule_map = dict(rules)
    used, out = set(), []
    for dim, name in zip(shape, tuple(logical_spec) + (None,) * (len(shape) - len(logical_spec))):
        axes = rule_map.get(name) if name is not None else None
        axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
        axes = tuple(a for a in axes if a not in used and mesh.shape[a] > 1)
        size = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
        if axes and dim % size:
            logging.warning("axis %r of size %d is not divisible by mesh axes %s (%d); "
                            "keeping it replicated", name, dim, axes, size)
            axes = ()
        used.update(axes)
        out.append(axes[0] if len(axes) == 1 else (axes or None))
    return P(*out)


def logical_to_shardings(logical_specs, abstract_tree, mesh: Mesh, rules=DEFAULT_RULES):
    """NamedShardings for a tree, from its logical PartitionSpecs and shapes."""
    return jax.tree.map(
        lambda spec, x: NamedSharding(mesh, _mesh_axes_for(spec, x.shape, mesh, rules)),
        logical_specs, abstract_tree,
        is_leaf=lambda s: isinstance(s, P))


def param_shardings(model_config, mesh: Mesh, rules=DEFAULT_RULES):
    """NamedShardings of a model's params, from their logical axis names."""
    from slm_jax import model as model_lib
    return logical_to_shardings(model_lib.logical_param_specs(model_config),
                                model_lib.abstract_params(model_config), mesh, rules)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules=DEFAULT_RULES):
    """Context in which the model's logical activation constraints apply."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield
