"""Joining JAX's distributed runtime (slm_jax/parallel/distributed.py): when to join, with what, and SIGTERM left to JAX."""

import os

import jax
import pytest
from jax._src import clusters
from jax._src.clusters import cloud_tpu_cluster

from slm_jax.parallel import distributed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRST, MORE = 4, 6  # steps of the joint run, and where the resumed runs stop


# --- initialize_distributed: when to join, and with what ------------------------------------

CLUSTER_VARS = ["JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS",
                "SLURM_PROCID", "SLURM_LOCALID", "OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_SIZE",
                "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "TPU_WORKER_HOSTNAMES",
                "TPU_PROCESS_ADDRESSES", "TPU_WORKER_ID", "KUBERNETES_SERVICE_HOST",
                "MEGASCALE_NUM_SLICES", "MEGASCALE_SLICE_ID", "MEGASCALE_COORDINATOR_ADDRESS"]


@pytest.fixture
def calls(monkeypatch):
    """jax.distributed.initialize replaced by a recorder of what JAX would resolve."""
    for var in CLUSTER_VARS:
        monkeypatch.delenv(var, raising=False)
    seen = []

    def fake_initialize(coordinator_address=None, num_processes=None, process_id=None,
                        local_device_ids=None, cluster_detection_method=None):
        if cluster_detection_method != "deactivate":
            coordinator_address, num_processes, process_id, local_device_ids = (
                clusters.ClusterEnv.auto_detect_unset_distributed_params(
                    coordinator_address, num_processes, process_id, local_device_ids,
                    cluster_detection_method, 10))
        seen.append((coordinator_address, num_processes, process_id))

    monkeypatch.setattr(jax.distributed, "initialize", fake_initialize)
    return seen


def test_a_single_process_does_not_join(calls, monkeypatch):
    assert distributed.initialize_distributed() is False
    monkeypatch.setenv("SLURM_JOB_ID", "7")  # a one-task SLURM job
    for var, value in [("SLURM_STEP_NODELIST", "node001"), ("SLURM_NTASKS", "1"),
                       ("SLURM_PROCID", "0"), ("SLURM_LOCALID", "0")]:
        monkeypatch.setenv(var, value)
    assert distributed.initialize_distributed() is False
    assert calls == []


def test_slurm_is_detected_by_jax(calls, monkeypatch):
    for var, value in [("SLURM_JOB_ID", "1234"), ("SLURM_STEP_NODELIST", "node[001-002]"),
                       ("SLURM_NTASKS", "2"), ("SLURM_PROCID", "1"), ("SLURM_LOCALID", "0")]:
        monkeypatch.setenv(var, value)
    assert distributed.initialize_distributed() is True
    [(address, count, process)] = calls
    assert address.startswith("node001:") and (count, process) == (2, 1)
    # cluster_detection_method=deactivate leaves it to explicit flags: none here.
    calls.clear()
    assert distributed.initialize_distributed(cluster_detection_method="deactivate") is False


def test_open_mpi_is_detected_by_jax(calls, monkeypatch):
    for var, value in [("OMPI_MCA_orte_hnp_uri", "1234.0;tcp://10.0.0.5:5000"),
                       ("OMPI_COMM_WORLD_SIZE", "4"), ("OMPI_COMM_WORLD_RANK", "3"),
                       ("OMPI_COMM_WORLD_LOCAL_RANK", "1")]:
        monkeypatch.setenv(var, value)
    assert distributed.initialize_distributed() is True
    [(address, count, process)] = calls
    assert address.startswith("10.0.0.5:") and (count, process) == (4, 3)


@pytest.mark.parametrize("hosts, joins", [("t0,t1", True), ("t0", False)])
def test_tpu_slices_call_initialize_without_arguments(calls, monkeypatch, hosts, joins):
    monkeypatch.setattr(cloud_tpu_cluster, "running_in_cloud_tpu_vm", True)
    monkeypatch.setattr(cloud_tpu_cluster.BaseTpuCluster, "wait_for_coordinator",
                        classmethod(lambda cls, address, timeout: None))
    # What a GKE TPU slice's environment holds (GCE VMs give the same through metadata).
    for var, value in [("TPU_WORKER_HOSTNAMES", hosts), ("TPU_WORKER_ID", "0"),
                       ("MEGASCALE_NUM_SLICES", "1"), ("MEGASCALE_SLICE_ID", "0"),
                       ("MEGASCALE_COORDINATOR_ADDRESS", "t0")]:
        monkeypatch.setenv(var, value)
    assert distributed.initialize_distributed() is joins
    assert calls == ([("t0:8482", 2, 0)] if joins else [])


def test_tpu_launcher_coordinator_wins_and_jax_counts_every_slice(calls, monkeypatch):
    """What launch/tpu_vm.py run sets up on worker 1 of slice 1 of a 2-slice job: its own
    JAX_COORDINATOR_ADDRESS (slice 0's worker 0, on a port the TPU firewall opens, not
    jax's 8482), with the process count and id still coming from JAX's TPU detection."""
    monkeypatch.setattr(cloud_tpu_cluster, "running_in_cloud_tpu_vm", True)
    monkeypatch.setattr(cloud_tpu_cluster.BaseTpuCluster, "wait_for_coordinator",
                        classmethod(lambda cls, address, timeout: None))
    for var, value in [("TPU_WORKER_HOSTNAMES", "t2,t3"), ("TPU_WORKER_ID", "1"),
                       ("MEGASCALE_NUM_SLICES", "2"), ("MEGASCALE_SLICE_ID", "1"),
                       ("MEGASCALE_COORDINATOR_ADDRESS", "t0"),
                       ("JAX_COORDINATOR_ADDRESS", "10.1.0.2:8476")]:
        monkeypatch.setenv(var, value)
    assert distributed.initialize_distributed() is True
    assert calls == [("10.1.0.2:8476", 4, 3)]


def test_explicit_coordinator_flags(calls):
    assert distributed.initialize_distributed("127.0.0.1:1234", 2, 1) is True
    assert calls == [("127.0.0.1:1234", 2, 1)]
    with pytest.raises(ValueError, match="num_processes or process_id is not"):
        distributed.initialize_distributed("127.0.0.1:1234")
