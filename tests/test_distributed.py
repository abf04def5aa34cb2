"""Joining JAX's distributed runtime (slm_jax/parallel/distributed.py): when to join, with what, and SIGTERM left to JAX."""

import os
import socket
import subprocess
import sys

import jax
import pytest
from jax._src import clusters
from jax._src.clusters import cloud_tpu_cluster

from slm_jax.parallel import distributed
from tests.tiny_corpus import tiny_corpus

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRST, MORE = 4, 6  # steps of the joint run, and where the resumed runs stop


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("multiprocess")
    paths, vocab = tiny_corpus(root, seed=4)
    return paths.web_tfrecord, vocab


def flags(data, run_dir, num_steps):
    pattern, vocab = data
    return ["--gin_file=gin/models/tiny.gin", "--gin.run.job=train",
            f"--gin.train.run_dir={run_dir}", f"--gin.train.num_steps={num_steps}",
            f"--gin.DataConfig.file_pattern={pattern}", f"--gin.DataConfig.vocab_path={vocab}",
            "--gin.DataConfig.seq_len=64", "--gin.DataConfig.global_batch_size=8",
            # The data order depends on num_streams, not on the process count.
            "--gin.DataConfig.num_streams=2",
            "--gin.MeshConfig.data=2", "--gin.MeshConfig.fsdp=4",
            "--gin.train.log_every=1", "--gin.CheckpointConfig.every_steps=2",
            "--gin.CheckpointConfig.keep=10", "--gin.OptimizerConfig.learning_rate=3e-3",
            # A constant learning rate, so a run of FIRST steps is a prefix of one of MORE.
            "--gin.OptimizerConfig.end_lr_ratio=1.0"]


def env(devices):
    return {**os.environ, "JAX_PLATFORMS": "cpu", "SLM_JAX_TRACEBACK": "1",
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_processes(data, run_dir, num_steps) -> list[str]:
    """Both processes of one job; their output."""
    from jax._src.lib import _jax
    if not hasattr(_jax, "make_gloo_tcp_collectives"):
        pytest.skip("this jaxlib has no gloo CPU collectives, so CPU processes cannot share a mesh")
    port, procs, logs = free_port(), [], []
    for process_id in range(2):
        log = open(f"{run_dir}.process{process_id}.log", "w+")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "slm_jax.main", *flags(data, run_dir, num_steps),
             f"--gin.initialize_distributed.coordinator_address=127.0.0.1:{port}",
             "--gin.initialize_distributed.num_processes=2",
             f"--gin.initialize_distributed.process_id={process_id}"],
            cwd=REPO, env=env(4), stdout=log, stderr=subprocess.STDOUT, text=True))
        logs.append(log)
    try:
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:  # only our own two children
            if p.poll() is None:
                p.kill()
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    assert codes == [0, 0], "\n".join(o[-3000:] for o in outputs)
    return outputs


@pytest.fixture(scope="module")
def joint(data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("joint") / "run"
    return run_dir, run_two_processes(data, run_dir, FIRST)


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


def test_explicit_coordinator_flags(calls):
    assert distributed.initialize_distributed("127.0.0.1:1234", 2, 1) is True
    assert calls == [("127.0.0.1:1234", 2, 1)]
    with pytest.raises(ValueError, match="num_processes or process_id is not"):
        distributed.initialize_distributed("127.0.0.1:1234")


def test_multi_process_runs_leave_sigterm_to_jax(monkeypatch):
    """A Python SIGTERM handler would replace JAX's preemption notifier: then one host
    would stop alone and the others crash in the next collective (seen with 2 processes)."""
    import signal
    from slm_jax.jobs.train_hooks import PreemptionWatcher

    class Checkpointer:
        def reached_preemption(self, step):
            return step == 7

    handler = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    watcher = PreemptionWatcher()
    assert signal.getsignal(signal.SIGTERM) is handler
    assert [watcher.reached(Checkpointer(), s) for s in (6, 7)] == [False, True]
    watcher.close()
