"""Multi-host for real: two processes on localhost train as one 8-device job.

Each process runs `python -m slm_jax.main` with 4 CPU devices and joins JAX's
distributed runtime through the `initialize_distributed` gin bindings (CPU
collectives over gloo). Their losses and params must equal one process with
8 devices, and checkpoints must move between the two layouts. The
`initialize_distributed` unit tests at the end cover cluster auto-detection.
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import gin
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from slm_jax import main as main_lib
from slm_jax.parallel import ownership
from tests.tiny_corpus import tiny_corpus

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIRST, MORE = 4, 6  # steps of the joint run, and where the resumed runs stop
TOLERANCE = 1e-5    # gloo sums the 8 devices' partial results in another order than XLA's CPU


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("multiprocess")
    paths, vocab = tiny_corpus(root, seed=4)
    return paths.web_tfrecord, vocab, str(root / "jax_cache")


def flags(data, run_dir, num_steps):
    pattern, vocab, _ = data
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


def run_single(data, run_dir, num_steps):
    """One process with 8 devices: this one (conftest), through the real entry point."""
    gin.clear_config()
    os.environ["SLM_JAX_TRACEBACK"] = "1"  # a failure raises with its traceback
    try:
        assert main_lib.main(flags(data, run_dir, num_steps)) == 0
    finally:
        del os.environ["SLM_JAX_TRACEBACK"]
        gin.clear_config()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_processes(data, run_dir, num_steps, codes_wanted=(0, 0)) -> list[str]:
    """Both processes of one job; their output. Failures show tracebacks unless a refusal
    (exit code 2) is wanted."""
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
             f"--gin.initialize_distributed.process_id={process_id}",
             # the second two-process job loads the first one's compiled step
             f"--gin.run.compilation_cache_dir={data[2]}"],
            cwd=REPO, env={**env(4), "SLM_JAX_TRACEBACK": "" if 2 in codes_wanted else "1"},
            stdout=log, stderr=subprocess.STDOUT, text=True))
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
    assert codes == list(codes_wanted), "\n".join(o[-3000:] for o in outputs)
    return outputs


def metrics(run_dir):
    lines = [json.loads(ln) for ln in open(os.path.join(run_dir, "metrics.jsonl"))]
    return {ln["step"]: ln for ln in lines}, len(lines)


def params_at(run_dir, step):
    """The saved params on one local device, whichever processes' devices wrote them."""
    path = os.path.join(run_dir, "checkpoints", str(step), "params")
    checkpointer = ocp.StandardCheckpointer()
    tree = checkpointer.metadata(path).item_metadata
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return checkpointer.restore(path, jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), getattr(tree, "tree", tree)))


def max_param_diff(run_a, run_b, step) -> float:
    a, b = jax.tree.leaves(params_at(run_a, step)), jax.tree.leaves(params_at(run_b, step))
    assert len(a) == len(b)
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(a, b))


def assert_losses_close(run_a, run_b, steps):
    la, lb = metrics(run_a)[0], metrics(run_b)[0]
    for step in steps:
        for key in ("loss", "selected_loss", "grad_norm"):
            np.testing.assert_allclose(la[step][key], lb[step][key], rtol=TOLERANCE,
                                       err_msg=f"step {step} {key}")


@pytest.fixture(scope="module")
def single(data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("single") / "run"
    run_single(data, run_dir, MORE)
    return run_dir


@pytest.fixture(scope="module")
def joint(data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("joint") / "run"
    return run_dir, run_two_processes(data, run_dir, FIRST)


def test_two_processes_train_like_one_with_eight_devices(single, joint):
    run_dir, outputs = joint
    assert all("Traceback" not in out for out in outputs)
    assert_losses_close(single, run_dir, range(1, FIRST + 1))
    diff = max_param_diff(single, run_dir, FIRST)
    print(f"2 processes x 4 devices vs 1 process x 8 devices: max abs param diff after "
          f"{FIRST} steps {diff:.3g}")
    assert diff < TOLERANCE
    # Shared files come from process 0 only; the checkpoint holds every process's streams.
    by_step, lines = metrics(run_dir)
    assert sorted(by_step) == list(range(1, FIRST + 1)) and lines == FIRST
    record = json.loads((run_dir / "run_record.json").read_text())
    assert len(record["history"]) == 1
    assert record["devices"]["process_count"] == 2 and record["devices"]["device_count"] == 8
    assert record["devices"]["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1}
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["2", "4"]
    data_state = json.loads((run_dir / "checkpoints" / "4" / "data_state" / "metadata").read_text())
    assert data_state["step"] == 4 and sorted(data_state["positions"]) == ["0", "1"]


def test_a_two_process_checkpoint_resumes_in_one_process(data, single, joint, tmp_path, caplog):
    run_dir = tmp_path / "run"
    shutil.copytree(joint[0], run_dir)
    run_single(data, run_dir, MORE)
    assert "no saved data order" not in caplog.text  # the 2 processes' stream positions were enough
    by_step, lines = metrics(run_dir)
    assert sorted(by_step) == list(range(1, MORE + 1)) and lines == MORE
    assert_losses_close(single, run_dir, range(FIRST + 1, MORE + 1))
    diff = max_param_diff(single, run_dir, MORE)
    print(f"2-process checkpoint of step {FIRST} resumed in 1 process: max abs param diff at "
          f"step {MORE} {diff:.3g}")
    assert diff < TOLERANCE


def test_a_one_process_checkpoint_resumes_in_two_processes(data, single, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(single, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / str(MORE))  # back to the checkpoint of step FIRST
    kept = [ln for ln in (run_dir / "metrics.jsonl").read_text().splitlines()
            if json.loads(ln)["step"] <= FIRST]
    (run_dir / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    outputs = run_two_processes(data, run_dir, MORE)
    assert all("no saved data order" not in out for out in outputs)
    by_step, lines = metrics(run_dir)
    assert sorted(by_step) == list(range(1, MORE + 1)) and lines == MORE  # steps 5, 6 only
    assert_losses_close(single, run_dir, range(FIRST + 1, MORE + 1))
    diff = max_param_diff(single, run_dir, MORE)
    print(f"1-process checkpoint of step {FIRST} resumed in 2 processes: max abs param diff at "
          f"step {MORE} {diff:.3g}")
    assert diff < TOLERANCE


# --- initialize_distributed: when to join, and with what ------------------------------------




def test_both_processes_refuse_a_run_directory_another_job_owns(data, tmp_path):
    """Process 0 takes the directory and tells the others: here it cannot, so all stop."""
    run_dir = tmp_path / "run"
    with ownership.own(str(run_dir), binding="train.run_dir"):
        outputs = run_two_processes(data, run_dir, FIRST, codes_wanted=(2, 2))
    assert f"is in use by another job: host {socket.gethostname()}, pid {os.getpid()}" in outputs[0]
    assert "process 0 could not take the run directory" in outputs[1]
    assert not (run_dir / "checkpoints").exists()
