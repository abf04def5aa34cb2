"""Multi-host start-up through JAX's own distributed runtime (never a home-made one)."""

from __future__ import annotations

import logging
import os

import gin
import jax


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
                "initialize_distributed.coordinator_address, .num_processes and .process_id; "
                "or, for a single process, set "
                "initialize_distributed.cluster_detection_method='deactivate'.") from e
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
      ``initialize_distributed.coordinator_address = '10.0.0.2:1234'`` (a gin binding,
      in a file or on the command line; or export ``JAX_COORDINATOR_ADDRESS``).
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
            "initialize_distributed.num_processes and .process_id on every process.")
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
