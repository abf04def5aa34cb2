"""Device mesh, logical-axis rules and multi-host start-up.

The model names every param and activation axis logically ("embed", "mlp",
"activation_batch", ...). One rule table maps those names onto the mesh axes
(data, fsdp, tensor): batch over data+fsdp, params FSDP-sharded over fsdp and
split over tensor where the model has a heads/mlp/vocab axis.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os

import flax.linen as nn
import gin
import jax
import numpy as np
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
    """Mesh shape (data, fsdp, tensor); one size may be -1 for "the rest"."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    rules: tuple = DEFAULT_RULES

    def shape(self, num_devices: int) -> tuple[int, int, int]:
        sizes = [self.data, self.fsdp, self.tensor]
        flag = "--gin.MeshConfig.{}".format
        if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
            raise ValueError(
                f"MeshConfig (data={self.data}, fsdp={self.fsdp}, tensor={self.tensor}) "
                f"needs positive sizes with at most one -1; fix {flag('data')} etc.")
        known = int(np.prod([s for s in sizes if s != -1]))
        if -1 in sizes:
            if num_devices % known:
                raise ValueError(
                    f"MeshConfig (data={self.data}, fsdp={self.fsdp}, tensor={self.tensor}) "
                    f"does not divide the {num_devices} devices: the fixed axes need a "
                    f"multiple of {known}; change {flag('fsdp')} or {flag('tensor')}.")
            sizes[sizes.index(-1)] = num_devices // known
        if int(np.prod(sizes)) != num_devices:
            raise ValueError(
                f"MeshConfig (data={self.data}, fsdp={self.fsdp}, tensor={self.tensor}) "
                f"uses {int(np.prod(sizes))} devices but {num_devices} are available; set "
                f"one axis to -1 (e.g. {flag('data')}=-1) or make the product {num_devices}.")
        return tuple(sizes)


def make_mesh(config: MeshConfig, devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: all, every host)."""
    devices = jax.devices() if devices is None else list(devices)
    # Auto axes: XLA's sharding propagation places what the rules leave open.
    return jax.make_mesh(config.shape(len(devices)), MESH_AXES,
                         axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def data_parallel_size(mesh: Mesh) -> int:
    return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


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


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules=DEFAULT_RULES):
    """Context in which the model's logical activation constraints apply."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def _detected_cluster(method: str | None):
    """(name, process count) of the cluster JAX's own auto-detection finds, else None.

    The same detection jax.distributed.initialize() runs with no arguments
    (Cloud TPU VMs and GKE TPU slices, SLURM, Open MPI, Kubernetes); asked
    first so that a single-process job never starts the runtime.
    """
    if method == "deactivate":
        return None
    try:
        from jax._src.clusters import ClusterEnv  # what jax.distributed.initialize() consults
    except ImportError:  # pragma: no cover  (a jax without it: explicit flags only)
        return None
    for env in ClusterEnv._cluster_types:
        if (env.name != method) if method else env.opt_in_only_method:
            continue
        try:
            if env.is_env_present():
                return env.name or env.__name__, int(env.get_process_count())
        except Exception as e:  # e.g. the TPU metadata server did not answer
            raise RuntimeError(
                f"JAX's {env.name or env.__name__} cluster detection failed ({e}); set "
                "--gin.initialize_distributed.coordinator_address, .num_processes and "
                ".process_id, or --gin.initialize_distributed.cluster_detection_method="
                "deactivate for a single process.") from e
    return None


@gin.configurable
def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None,
                           local_device_ids=None,
                           cluster_detection_method: str | None = None) -> bool:
    """Joins JAX's distributed runtime when this is a multi-process job.

    * TPU pod slices, SLURM and Open MPI jobs are found by JAX's own cluster
      detection; with more than one process there, this calls
      ``jax.distributed.initialize()`` with no arguments and JAX fills them in.
    * Elsewhere (GPU hosts over ssh, CPU processes) pass the coordinator
      address, the process count and this process's id, e.g.
      ``--gin.initialize_distributed.coordinator_address="'10.0.0.2:1234'"``
      (or export ``JAX_COORDINATOR_ADDRESS``).
    * A single process never starts the runtime.

    ``cluster_detection_method`` is JAX's: a cluster name to use only that one,
    or ``deactivate`` to skip detection. CPU processes exchange collectives
    over gloo (TCP). Returns True when the runtime was initialised.
    """
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    cluster = _detected_cluster(cluster_detection_method)
    if coordinator_address is None and (cluster is None or cluster[1] <= 1):
        return False
    if cluster is None and (num_processes is None or process_id is None):
        raise ValueError(
            f"coordinator address {coordinator_address!r} is set but num_processes or "
            "process_id is not, and JAX detects no TPU/SLURM/Open MPI cluster; set "
            "--gin.initialize_distributed.num_processes and "
            "--gin.initialize_distributed.process_id on every process.")
    if cluster is not None:
        logging.info("joining the %s cluster's %d processes (JAX cluster detection)", *cluster)
    # CPU devices of different processes need a cross-process collective
    # implementation; jax < 0.5 had none by default.
    if jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               local_device_ids=local_device_ids,
                               cluster_detection_method=cluster_detection_method)
    return True
