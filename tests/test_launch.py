"""Launchers: dry-run commands, and the remote shell lines run locally against stand-ins.

No network and no gcloud/ssh/sbatch needed: printed lines are split by bash itself
(so they are what a user would paste), and the commands meant for the workers are run
here under a scratch $HOME with a stand-in python that records how it was started.
"""
import json
import os
import re
import shlex
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch import common, tpu_vm

REPO = Path(__file__).resolve().parents[1]
GIN_FLAGS = [
    "--gin_file=gin/runs/rho1_math_1b.gin",
    "--gin.train.run_dir=gs://bucket/run",
    "--gin.DataConfig.file_pattern='gs://bucket/web data/*.tfrecord'",  # quotes, space, glob
    '--gin.run.note="it\'s $HOME `x` \\ done!"',                        # every shell metachar
]


def launch(script, *args, env=None, check=True):
    result = subprocess.run([sys.executable, f"launch/{script}", *args], cwd=REPO,
                            capture_output=True, text=True, env=env, timeout=60)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def dry_run(script, *args, env=None):
    """The command lines a dry run prints (notes dropped), each split into argv by bash."""
    out = launch(script, *args, env=env).stdout
    return [bash_words(line) for line in out.splitlines() if not line.startswith("#")]


def bash_words(line):
    out = subprocess.run(["bash", "-c", 'set -f; words() { printf "%s\\0" "$@"; }; words ' + line],
                         capture_output=True, check=True).stdout
    return out.decode().split("\0")[:-1]


def notes(script, *args):
    return [line for line in launch(script, *args).stdout.splitlines() if line.startswith("#")]


def remote_command(argv):
    return argv[argv.index("--command") + 1]


def write_executable(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def recorder(path, record, linger_s=0):
    """A stand-in program that writes its argv, cwd and env to `record`, then lingers."""
    write_executable(path, f"""#!{sys.executable}
import json, os, sys, time
json.dump({{"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}},
          open({str(record)!r}, "w"))
time.sleep({linger_s})
""")


def wait_for(path, timeout_s=15):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if path.exists() and path.stat().st_size:
            time.sleep(0.05)
            return json.loads(path.read_text())
        time.sleep(0.05)
    raise AssertionError(f"{path} was never written")


def metadata_server(bin_dir, tpu_env="", endpoints="unknown:unknown:10.0.0.5,unknown:unknown:10.0.0.6"):
    """A stand-in curl answering a TPU VM's metadata queries (404, exit 22, for what is unset)."""
    write_executable(bin_dir / "curl", f"""#!/bin/sh
case "$*" in
  */tpu-env) [ -n {shlex.quote(tpu_env)} ] || exit 22; printf '%s\\n' {shlex.quote(tpu_env)} ;;
  */worker-network-endpoints) echo {endpoints} ;;
  *) exit 22 ;;
esac
""")


def one_line_error(result, *needles):
    assert result.returncode == 2 and result.stdout == "", result
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def pinned_jax():
    text = (REPO / "requirements.txt").read_text()
    return re.search(r"^jax==(\S+)", text, re.M).group(1)


# --- slice shapes ---------------------------------------------------------------------------

@pytest.mark.parametrize("accelerator_type, hosts, chips_per_host", [
    ("v2-8", 1, 4), ("v3-32", 4, 4),
    ("v4-8", 1, 4), ("v4-16", 2, 4), ("v4-32", 4, 4), ("v4-128", 16, 4),
    ("v5p-8", 1, 4), ("v5p-128", 16, 4), ("v5p-1024", 128, 4),
    ("v5litepod-1", 1, 1), ("v5litepod-4", 1, 4), ("v5litepod-8", 1, 8),
    ("v5litepod-16", 2, 8), ("v5litepod-256", 32, 8),
    ("v6e-1", 1, 1), ("v6e-8", 1, 8), ("v6e-16", 2, 8), ("v6e-256", 32, 8),
])
def test_slice_shape(accelerator_type, hosts, chips_per_host):
    assert tpu_vm.slice_shape(accelerator_type) == tpu_vm.SliceShape(hosts, chips_per_host)


@pytest.mark.parametrize("accelerator_type, version", [
    ("v4-8", "tpu-ubuntu2204-base"), ("v5p-128", "v2-alpha-tpuv5"),
    ("v5litepod-16", "v2-alpha-tpuv5-lite"), ("v6e-8", "v2-alpha-tpuv6e"),
])
def test_default_runtime_version(accelerator_type, version):
    assert tpu_vm.default_runtime_version(accelerator_type) == version


@pytest.mark.parametrize("bad", ["v9-8", "v4", "tpu-8", "v4-0", "v4-12", "v5p-9", "v5litepod-12"])
def test_bad_accelerator_type_is_one_line_naming_the_flag(bad):
    result = launch("tpu_vm.py", "create", "--name", "n", "--zone", "z",
                    "--accelerator_type", bad, "--dry_run", check=False)
    assert result.returncode != 0 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert f"--accelerator_type={bad}" in result.stderr


# --- v4-8: one host -------------------------------------------------------------------------

V4 = ["--name", "tpu-a", "--zone", "us-central2-b"]


def test_v4_create():
    assert notes("tpu_vm.py", "create", *V4, "--accelerator_type", "v4-8", "--dry_run") == [
        "# v4-8: 1 host x 4 chips"]
    assert dry_run("tpu_vm.py", "create", *V4, "--accelerator_type", "v4-8", "--dry_run") == [[
        "gcloud", "compute", "tpus", "tpu-vm", "create", "tpu-a", "--zone=us-central2-b",
        "--accelerator-type=v4-8", "--version=tpu-ubuntu2204-base"]]


def test_v4_create_with_project_and_runtime_override():
    [argv] = dry_run("tpu_vm.py", "create", *V4, "--accelerator_type", "v4-8", "--project", "p",
                     "--runtime_version", "tpu-vm-base", "--reserved", "--dry_run")
    assert "--project=p" in argv and "--version=tpu-vm-base" in argv and argv[-1] == "--reserved"


def test_v4_setup_copies_the_checkout_and_pins_jax_tpu():
    tar, scp, ssh = dry_run("tpu_vm.py", "setup", *V4, "--dry_run")
    assert tar[:2] == ["tar", "-czf"] and tar[-3:] == ["-C", str(REPO), "."]
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
    assert scp[5] == tar[2] and scp[6] == "tpu-a:slm-jax.tgz"
    assert "--worker=all" in scp and "--zone=us-central2-b" in scp
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "tpu-a"]
    assert "--worker=all" in ssh and "--zone=us-central2-b" in ssh
    command = remote_command(ssh)
    words = bash_words(command.split(" && ")[-1])
    assert words == [os.path.expanduser("~/slm-jax-venv/bin/pip"), "install", "--quiet", "-r",
                     os.path.expanduser("~/slm-jax/requirements-tpu.txt")]
    subprocess.run(["bash", "-n", "-c", command], check=True)


def test_tpu_requirements_pin_jax_tpu_at_the_projects_jax():
    text = (REPO / "requirements-tpu.txt").read_text()
    assert "-r requirements.txt" in text.splitlines()
    assert re.search(r"^jax\[tpu\]==(\S+)$", text, re.M).group(1) == pinned_jax()


@pytest.mark.parametrize("accelerator_type, topology", [
    ("v5p-128", "v5p:4x4x4"), ("v4-32", "v4:2x2x4"), ("v5litepod-16", "v5e:4x4"),
    ("v6e-256", "v6e:16x16"), ("v5p-8", "v5p:2x2x1")])
def test_check_compiles_the_run_for_the_slices_topology(accelerator_type, topology):
    [command] = dry_run("tpu_vm.py", "check", "--accelerator_type", accelerator_type,
                        "--num_slices", "2", "--dry_run", "--", *GIN_FLAGS)
    assert command[command.index("-m"):command.index("-m") + 2] == ["-m", "slm_jax.main"]
    assert command[-4:] == ["--gin.MeshConfig.num_slices=2", "--gin.run.job=compile",
                            f"--gin.compile.topology={topology}", "--gin.compile.count_flops=False"]


def test_create_and_run_compile_for_the_slice_first_unless_told_not_to():
    v4_8 = [*V4, "--accelerator_type", "v4-8"]
    check, *create = dry_run("tpu_vm.py", "create", *v4_8, "--dry_run", "--", *GIN_FLAGS)
    assert "--gin.run.job=compile" in check and "--gin.compile.topology=v4:2x2x1" in check
    assert create[0][:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"]
    plan = dry_run("tpu_vm.py", "create", *v4_8, "--skip_check", "--dry_run", "--", *GIN_FLAGS)
    assert not any("--gin.run.job=compile" in step for step in plan)
    check, ssh = dry_run("tpu_vm.py", "run", *v4_8, "--dry_run", "--", *GIN_FLAGS)
    assert "--gin.compile.topology=v4:2x2x1" in check and ssh[:5] == [
        "gcloud", "compute", "tpus", "tpu-vm", "ssh"]


def test_setup_from_git_clones_on_every_worker():
    [ssh] = dry_run("tpu_vm.py", "setup", *V4, "--repo_url", "https://example.com/slm-jax.git",
                    "--branch", "v1", "--dry_run")
    assert "--worker=all" in ssh
    assert ("git clone --depth 1 --branch v1 https://example.com/slm-jax.git ~/slm-jax"
            in remote_command(ssh))


def test_v4_run_passes_gin_flags_intact_to_every_worker(tmp_path):
    [ssh] = dry_run("tpu_vm.py", "run", *V4, "--env", "XLA_FLAGS=--a=1 --b='2'",
                    "--dry_run", "--", *GIN_FLAGS)
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "tpu-a"]
    assert "--worker=all" in ssh and "--zone=us-central2-b" in ssh

    # Run the worker-side command here, with stand-ins for the venv's python and the
    # metadata server, as gcloud's ssh would run it on each worker.
    home, record = tmp_path / "home", tmp_path / "record.json"
    (home / "slm-jax").mkdir(parents=True)
    recorder(home / "slm-jax-venv/bin/python", record, linger_s=30)
    metadata_server(tmp_path / "bin")
    env = {**os.environ, "HOME": str(home), "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}

    def on_worker(command):
        return subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True,
                              timeout=30)

    started = on_worker(remote_command(ssh))
    assert started.returncode == 0, started.stderr
    seen = wait_for(record)
    pid = int((home / "slm_jax.pid").read_text())
    try:
        assert seen["argv"] == ["-m", "slm_jax.main", *GIN_FLAGS]
        assert seen["cwd"] == str(home / "slm-jax")
        assert seen["env"]["XLA_FLAGS"] == "--a=1 --b='2'"
        # worker 0 on the port GCP's TPU firewall opens, not jax's own 8482 (jax#35905)
        assert seen["env"]["JAX_COORDINATOR_ADDRESS"] == "10.0.0.5:8476"
        assert (home / "slm_jax.log").exists()

        again = on_worker(remote_command(ssh))
        assert again.returncode == 1 and "already running" in again.stderr

        [stop] = dry_run("tpu_vm.py", "stop", *V4, "--dry_run")
        assert "--worker=all" in stop
        assert on_worker(remote_command(stop)).returncode == 0
        deadline = time.time() + 10
        while Path(f"/proc/{pid}").exists() and time.time() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    finally:
        if Path(f"/proc/{pid}").exists():
            subprocess.run(["kill", str(pid)])


def test_v4_logs_and_delete():
    [logs] = dry_run("tpu_vm.py", "logs", *V4, "--dry_run")
    assert "--worker=0" in logs and remote_command(logs) == "tail -n 100 -F ~/slm_jax.log"
    [logs] = dry_run("tpu_vm.py", "logs", *V4, "--worker", "3", "--dry_run")
    assert "--worker=3" in logs
    assert dry_run("tpu_vm.py", "delete", *V4, "--quiet", "--dry_run") == [[
        "gcloud", "compute", "tpus", "tpu-vm", "delete", "tpu-a", "--zone=us-central2-b",
        "--quiet"]]


def test_non_gin_flags_after_double_dash_are_rejected():
    result = launch("tpu_vm.py", "run", *V4, "--dry_run", "--", "--gin_file=x.gin", "--steps=3",
                    check=False)
    assert result.returncode == 2 and "'--steps=3' is not a gin flag" in result.stderr
    result = launch("tpu_vm.py", "logs", *V4, "--dry_run", "--", "--gin.a=1", check=False)
    assert result.returncode == 2 and "only check, create and run" in result.stderr


# --- v5p-128: a spot queued resource, 16 hosts ------------------------------------------------

V5P = ["--name", "pod", "--zone", "us-east5-a", "--project", "proj"]


def test_v5p_queued_spot_create():
    args = ["create", *V5P, "--accelerator_type", "v5p-128", "--queued", "--spot", "--dry_run"]
    assert notes("tpu_vm.py", *args)[0] == "# v5p-128: 16 hosts x 4 chips"
    assert dry_run("tpu_vm.py", *args) == [[
        "gcloud", "compute", "tpus", "queued-resources", "create", "pod", "--zone=us-east5-a",
        "--project=proj", "--node-id=pod", "--accelerator-type=v5p-128",
        "--runtime-version=v2-alpha-tpuv5", "--spot"]]


def test_v5p_run_on_all_workers_and_queued_delete():
    [ssh] = dry_run("tpu_vm.py", "run", *V5P, "--dry_run", "--", *GIN_FLAGS)
    assert ssh[4:8] == ["ssh", "pod", "--zone=us-east5-a", "--project=proj"]
    assert "--worker=all" in ssh
    assert dry_run("tpu_vm.py", "delete", *V5P, "--queued", "--quiet", "--dry_run") == [[
        "gcloud", "compute", "tpus", "queued-resources", "delete", "pod", "--zone=us-east5-a",
        "--project=proj", "--force", "--quiet"]]


# --- coordinator port, and 2 x v5p-128 as one multislice job -------------------------------

def test_run_puts_the_coordinator_on_the_chosen_port():
    [ssh] = dry_run("tpu_vm.py", "run", *V4, "--dry_run", "--", *GIN_FLAGS)
    assert "export JAX_COORDINATOR_ADDRESS=$coordinator:8476" in remote_command(ssh)
    [ssh] = dry_run("tpu_vm.py", "run", *V4, "--coordinator_port", "8471", "--dry_run", "--",
                    *GIN_FLAGS)
    assert "export JAX_COORDINATOR_ADDRESS=$coordinator:8471" in remote_command(ssh)


MULTI = [*V5P, "--num_slices", "2"]


def test_multislice_create_asks_for_one_queued_resource_of_two_nodes():
    args = ["create", *MULTI, "--accelerator_type", "v5p-128", "--queued", "--spot", "--dry_run"]
    assert notes("tpu_vm.py", *args)[0] == "# 2 slices of v5p-128: 16 hosts x 4 chips each"
    assert dry_run("tpu_vm.py", *args) == [[
        "gcloud", "compute", "tpus", "queued-resources", "create", "pod", "--zone=us-east5-a",
        "--project=proj", "--node-count=2", "--node-prefix=pod", "--accelerator-type=v5p-128",
        "--runtime-version=v2-alpha-tpuv5", "--spot"]]


def test_multislice_setup_and_stop_reach_every_worker_of_every_slice():
    _, scp, ssh = dry_run("tpu_vm.py", "setup", *MULTI, "--dry_run")
    assert scp[3:5] == ["queued-resources", "scp"] and scp[6] == "pod:slm-jax.tgz"
    assert scp[-2:] == ["--node=all", "--worker=all"]
    assert ssh[3:6] == ["queued-resources", "ssh", "pod"]
    assert "--node=all" in ssh and "--worker=all" in ssh
    assert "requirements-tpu.txt" in remote_command(ssh)
    [stop] = dry_run("tpu_vm.py", "stop", *MULTI, "--dry_run")
    assert stop[3:5] == ["queued-resources", "ssh"] and "--node=all" in stop
    [logs] = dry_run("tpu_vm.py", "logs", *MULTI, "--slice", "1", "--dry_run")
    assert "--node=1" in logs and "--worker=0" in logs


MULTISLICE_TPU_ENV = ("MEGASCALE_COORDINATOR_ADDRESS: '10.1.0.2:8080'\n"
                      "MEGASCALE_NUM_SLICES: '2'\nMEGASCALE_SLICE_ID: '1'")


@pytest.mark.parametrize("tpu_env, coordinator", [
    (MULTISLICE_TPU_ENV, "10.1.0.2:8476"),   # slice 0's worker 0, from GCP's tpu-env
    ("", None),                               # a single slice: refused before starting
])
def test_multislice_run_on_a_worker_of_slice_1(tmp_path, tpu_env, coordinator):
    [ssh] = dry_run("tpu_vm.py", "run", *MULTI, "--dry_run", "--", *GIN_FLAGS)
    assert ssh[3:6] == ["queued-resources", "ssh", "pod"]
    assert "--node=all" in ssh and "--worker=all" in ssh
    home, record = tmp_path / "home", tmp_path / "record.json"
    (home / "slm-jax").mkdir(parents=True)
    recorder(home / "slm-jax-venv/bin/python", record)
    metadata_server(tmp_path / "bin", tpu_env=tpu_env,
                    endpoints="10.0.0.6,10.0.0.7")  # this slice's own workers
    env = {**os.environ, "HOME": str(home), "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    started = subprocess.run(["bash", "-c", remote_command(ssh)], env=env, capture_output=True,
                             text=True, timeout=30)
    if coordinator is None:
        assert started.returncode == 1 and not record.exists()
        assert "one of 1 slices; pass --num_slices=1, not 2" in started.stderr
        return
    assert started.returncode == 0, started.stderr
    seen = wait_for(record)
    assert seen["argv"] == ["-m", "slm_jax.main", *GIN_FLAGS, "--gin.MeshConfig.num_slices=2"]
    assert seen["env"]["JAX_COORDINATOR_ADDRESS"] == coordinator


@pytest.mark.parametrize("args, needles", [
    (["run", *V4, "--coordinator_port", "0"], ["--coordinator_port=0 is not a TCP port"]),
    (["run", *V4, "--coordinator_port", "70000"], ["--coordinator_port=70000"]),
    (["run", *V4, "--num_slices", "0"], ["--num_slices=0 must be at least 1"]),
    (["create", *MULTI, "--accelerator_type", "v5p-128"], ["--num_slices=2 needs --queued"]),
    (["delete", *MULTI], ["--num_slices=2 needs --queued"]),
    (["run", *MULTI, "--", "--gin.MeshConfig.num_slices=3"],
     ["--gin.MeshConfig.num_slices=3 contradicts --num_slices=2"]),
])
def test_bad_launch_values_are_one_line(args, needles):
    one_line_error(launch("tpu_vm.py", args[0], "--dry_run", *args[1:], check=False), *needles)


def test_spot_and_reserved_exclude_each_other():
    result = launch("tpu_vm.py", "create", *V5P, "--accelerator_type", "v5p-128", "--spot",
                    "--reserved", "--dry_run", check=False)
    assert result.returncode != 0 and "not allowed with" in result.stderr


def test_execution_runs_exactly_the_dry_run_commands(tmp_path):
    calls = tmp_path / "calls.jsonl"
    for program in ("gcloud", "tar"):  # tar too: the tree may change under a real one
        write_executable(tmp_path / "bin" / program, f"""#!{sys.executable}
import json, os, sys
open({str(calls)!r}, "a").write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + "\\n")
""")
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
           "TMPDIR": str(tmp_path)}
    for args in (["setup", *V4], ["run", *V4, "--", *GIN_FLAGS], ["delete", *V5P, "--queued"]):
        calls.unlink(missing_ok=True)
        launch("tpu_vm.py", *args, env=env)
        expected = dry_run("tpu_vm.py", args[0], "--dry_run", *args[1:], env=env)
        assert [json.loads(line) for line in calls.read_text().splitlines()] == expected


def test_missing_gcloud_is_one_line(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}
    result = launch("tpu_vm.py", "delete", *V4, env=env, check=False)
    assert result.returncode == 2 and "gcloud: not found on PATH" in result.stderr


# --- GPU clusters: two 8xH100 nodes -----------------------------------------------------------

def test_slurm_script(tmp_path):
    out = launch("gpu_cluster.py", "slurm", "--nodes=2", "--gpus_per_node=8", "--repo_dir",
                 "/shared/slm jax", "--env", "XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler",
                 "--partition", "h100", "--dry_run", "--", *GIN_FLAGS).stdout
    assert out.splitlines()[0] == "# 2 nodes x 8 GPUs"
    # The dry run is a runnable transcript: run it with a stand-in sbatch.
    write_executable(tmp_path / "bin/sbatch",
                     f"#!/bin/sh\ncp \"$1\" {tmp_path}/submitted.sbatch\n")
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    subprocess.run(["bash", "-e", "-c", out], cwd=tmp_path, env=env, check=True)
    script = (tmp_path / "submitted.sbatch").read_text()
    assert script == (tmp_path / "slm_jax.sbatch").read_text()
    for line in ["#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --exclusive", "#SBATCH --partition=h100",
                 "export JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7",
                 "export XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler"]:
        assert line in script.splitlines()
    # The pinned GPU stack goes into the venv before srun starts the trainer with it.
    lines = script.splitlines()
    assert "[ -x .venv-gpu/bin/python ] || python3 -m venv .venv-gpu" in lines
    install = lines.index(".venv-gpu/bin/pip install --quiet -r requirements-gpu.txt")
    [srun] = [line for line in lines if line.startswith("srun ")]
    assert install < lines.index(srun)
    assert bash_words(srun) == ["srun", ".venv-gpu/bin/python", "-m", "slm_jax.main", *GIN_FLAGS]
    assert "coordinator_address" not in script
    subprocess.run(["bash", "-n", "-c", script], check=True)


def test_slurm_with_a_prepared_environment_installs_nothing():
    out = launch("gpu_cluster.py", "slurm", "--nodes=2", "--venv", "", "--python",
                 "/shared/env/bin/python", "--dry_run", "--", *GIN_FLAGS).stdout
    assert "pip install" not in out and "requirements-gpu.txt" not in out
    [srun] = [line for line in out.splitlines() if line.startswith("srun ")]
    assert bash_words(srun)[:2] == ["srun", "/shared/env/bin/python"]


def test_gpu_requirements_pin_jax_cuda_at_the_projects_jax():
    text = (REPO / "requirements-gpu.txt").read_text()
    assert "-r requirements.txt" in text.splitlines()
    assert re.search(r"^jax\[cuda1[23]\]==(\S+)$", text, re.M).group(1) == pinned_jax()


def test_slurm_submits_the_written_script(tmp_path):
    write_executable(tmp_path / "bin/sbatch", f"#!/bin/sh\necho \"$@\" > {tmp_path}/args\n")
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    script = tmp_path / "job.sbatch"
    launch("gpu_cluster.py", "slurm", "--nodes=2", "--script", str(script), "--", *GIN_FLAGS,
           env=env)
    assert (tmp_path / "args").read_text().strip() == str(script)
    assert "#SBATCH --nodes=2" in script.read_text()


def test_ssh_two_hosts(tmp_path):
    repo, record = tmp_path / "repo dir", tmp_path / "record.json"
    repo.mkdir()
    # The venv as the first launch left it: its python records how the trainer started,
    # its pip how it was asked to install.
    recorder(repo / ".venv-gpu/bin/python", record)
    write_executable(repo / ".venv-gpu/bin/pip",
                     f"#!/bin/sh\necho \"$@\" >> {shlex.quote(str(tmp_path / 'pip.log'))}\n")
    lines = dry_run("gpu_cluster.py", "ssh", "--hosts", "me@gpu-a,gpu-b", "--port", "9999",
                    "--repo_dir", str(repo), "--python", "/nonexistent/python",
                    "--env", "XLA_FLAGS=--a=1 --b=2", "--dry_run", "--", *GIN_FLAGS)
    assert [argv[:2] for argv in lines] == [["ssh", "me@gpu-a"], ["ssh", "gpu-b"]]
    for process_id, (_, _, command) in enumerate(lines):
        record.unlink(missing_ok=True)
        subprocess.run(["bash", "-c", command], check=True, timeout=30)
        assert (tmp_path / "pip.log").read_text().splitlines()[-1] == (
            "install --quiet -r requirements-gpu.txt")
        seen = wait_for(record)
        assert seen["argv"] == ["-m", "slm_jax.main", *GIN_FLAGS,
                                "--gin.initialize_distributed.coordinator_address='gpu-a:9999'",
                                "--gin.initialize_distributed.num_processes=2",
                                f"--gin.initialize_distributed.process_id={process_id}"]
        assert seen["cwd"] == str(repo) and seen["env"]["XLA_FLAGS"] == "--a=1 --b=2"
        assert (repo / f"slm_jax.{process_id}.log").exists()


def test_ssh_host_count_must_match_nodes():
    result = launch("gpu_cluster.py", "ssh", "--hosts", "a,b", "--nodes", "3", "--dry_run",
                    check=False)
    assert result.returncode == 2 and "--nodes=3" in result.stderr


# --- shell quoting --------------------------------------------------------------------------

@pytest.mark.parametrize("word", [
    "", "plain", "a b", "it's", "'quoted value'", '"double"', "$HOME", "`x`", "back\\slash",
    "bang!", "bang! it's", "$! ok'", "tab\tnew\nline", "~/x", "*.gin", "--gin.x='a b'",
    "--gin.x=", "--gin.x=$y", "-=x'y",
])
def test_quote_round_trips_through_bash(word):
    for rendered in (common.quote(word), common.join([word])):
        assert bash_words(rendered) == [word]
