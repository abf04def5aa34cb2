"""Multi-node GPU launcher: one `python -m slm_jax.main` per node, all GPUs of the node in it.

    python launch/gpu_cluster.py slurm --nodes 2 [--gpus_per_node 8] -- --gin_file=...
    python launch/gpu_cluster.py ssh --hosts h1,h2 [--port 8476] -- --gin_file=...

slurm: an sbatch script; jax reads the process count, ids and coordinator from
SLURM's environment. ssh: one detached process per host, with the coordinator
(the first host), process count and id passed as initialize_distributed gin flags.
Before starting, both install the pinned GPU stack (requirements-gpu.txt: jax[cuda12]
plus requirements.txt) into a venv in the repository (--venv; --venv '' uses --python as is).
Every subcommand takes --dry_run (print the commands, run nothing).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python launch/gpu_cluster.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from launch import common  # noqa: E402
from launch.common import LaunchError  # noqa: E402

HEREDOC_END = "SLM_JAX_SBATCH"
REQUIREMENTS = "requirements-gpu.txt"  # jax[cuda12] at requirements.txt's jax pin, and the rest
DEFAULT_VENV = ".venv-gpu"


def install_lines(args) -> list[str]:
    """Shell lines (run in the repository) that make the venv and install the GPU pins;
    none when --venv is empty. pip leaves what is already installed alone, so a rerun is quick."""
    if not args.venv:
        return []
    venv = common.quote(args.venv)
    return [f"[ -x {venv}/bin/python ] || {common.quote(args.python)} -m venv {venv}",
            f"{venv}/bin/pip install --quiet -r {REQUIREMENTS}"]


def trainer_python(args) -> str:
    return f"{args.venv}/bin/python" if args.venv else args.python


def sbatch_script(args, gin_flags: list[str]) -> str:
    optional = [f"#SBATCH --{flag}={value}" for flag, value in
                (("partition", args.partition), ("time", args.time), ("account", args.account))
                if value]
    env = [f"export {key}={common.quote(value)}" for key, value in common.parse_env(args.env)]
    return "\n".join([
        "#!/bin/bash",
        f"#SBATCH --job-name={args.job_name}",
        f"#SBATCH --nodes={args.nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={args.gpus_per_node}",
        "#SBATCH --exclusive",
        "#SBATCH --output=slm_jax-%j.log",
        *optional,
        "set -euo pipefail",
        f"cd {common.quote(str(args.repo_dir))}",
        *(["# the pinned GPU stack, installed once for all nodes (the repository is shared)"]
          if args.venv else []),
        *install_lines(args),
        # jax's SLURM detection pins each process to GPU $SLURM_LOCALID (it assumes one
        # process per GPU); with one process per node all but GPU 0 would sit idle.
        "# one process per node drives all of the node's GPUs",
        "export JAX_LOCAL_DEVICE_IDS=" + ",".join(map(str, range(args.gpus_per_node))),
        *env,
        "srun " + common.join([trainer_python(args), "-m", "slm_jax.main", *gin_flags]),
    ]) + "\n"


def slurm_plan(args, gin_flags: list[str]) -> tuple[list, str]:
    """(plan, script). The plan writes the script with a heredoc, so a dry run's output runs
    as it is; execution writes the file itself and runs only the plan's commands."""
    if args.nodes is None:
        raise LaunchError("slurm needs --nodes")
    script = sbatch_script(args, gin_flags)
    path = common.quote(str(args.script))
    plan = [f"# {args.nodes} node{'s' * (args.nodes != 1)} x {args.gpus_per_node} GPUs",
            f"cat > {path} <<'{HEREDOC_END}'\n{script}{HEREDOC_END}",
            ["sbatch", str(args.script)]]
    return plan, script


def _coordinator(args, hosts: list[str]) -> str:
    if args.coordinator_address:
        return args.coordinator_address
    return f"{hosts[0].rpartition('@')[2]}:{args.port}"  # user@host -> host


def ssh_plan(args, gin_flags: list[str]) -> list:
    hosts = [h for h in args.hosts.split(",") if h]
    if not hosts:
        raise LaunchError("ssh needs --hosts h1,h2,... (the first one is the coordinator)")
    if args.nodes is not None and args.nodes != len(hosts):
        raise LaunchError(f"--nodes={args.nodes} but --hosts names {len(hosts)} hosts")
    coordinator = _coordinator(args, hosts)
    env = common.parse_env(args.env)
    plan = [f"# {len(hosts)} host{'s' * (len(hosts) != 1)} x {args.gpus_per_node} GPUs, "
            f"coordinator {coordinator}"]
    for process_id, host in enumerate(hosts):
        flags = [*gin_flags,
                 f"--gin.initialize_distributed.coordinator_address='{coordinator}'",
                 f"--gin.initialize_distributed.num_processes={len(hosts)}",
                 f"--gin.initialize_distributed.process_id={process_id}"]
        start = common.detached(common.quote(trainer_python(args)),
                                ["-m", "slm_jax.main", *flags],
                                log=f"slm_jax.{process_id}.log", env=env)
        install = "".join(f"{line} || exit 1; " for line in install_lines(args))
        plan.append(["ssh", host,
                     f"cd {common.quote(str(args.repo_dir))} || exit 1; {install}{start}"])
    return plan


def build_parser() -> argparse.ArgumentParser:
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--nodes", type=int,
                        help="number of nodes (slurm: required; ssh: the number of --hosts)")
    shared.add_argument("--gpus_per_node", type=int, default=8)
    shared.add_argument("--repo_dir", default=str(common.REPO_ROOT),
                        help="this repository's path on the nodes (default: the same as here)")
    shared.add_argument("--python", default="python3",
                        help="interpreter on the nodes that makes the venv (with --venv '': "
                             "runs the trainer, e.g. /shared/env/bin/python)")
    shared.add_argument("--venv", default=DEFAULT_VENV,
                        help=f"venv (relative to --repo_dir, or absolute) that {REQUIREMENTS} "
                             f"is installed into before the start (default {DEFAULT_VENV}); "
                             "'' skips the install")
    shared.add_argument("--env", action="append", metavar="KEY=VALUE",
                        help="environment variable for the trainer (repeatable), e.g. XLA_FLAGS")
    shared.add_argument("--dry_run", action="store_true",
                        help="print the commands and run nothing")

    parser = argparse.ArgumentParser(
        prog="gpu_cluster.py", description="Run slm_jax on several GPU nodes.",
        epilog="gin flags for slm_jax.main go after `--`.")
    sub = parser.add_subparsers(dest="backend", required=True)

    slurm = sub.add_parser("slurm", parents=[shared], help="submit an sbatch job")
    slurm.add_argument("--job_name", default="slm-jax")
    slurm.add_argument("--partition")
    slurm.add_argument("--time", help="time limit, e.g. 2-00:00:00")
    slurm.add_argument("--account")
    slurm.add_argument("--script", type=Path, default=Path("slm_jax.sbatch"),
                       help="where to write the sbatch script")

    ssh = sub.add_parser("ssh", parents=[shared], help="start one process per host over ssh")
    ssh.add_argument("--hosts", required=True, help="comma-separated; the first is the coordinator")
    ssh.add_argument("--port", type=int, default=8476, help="coordinator port on the first host")
    ssh.add_argument("--coordinator_address",
                     help="HOST:PORT the others reach the first host at (default: HOSTS[0]:PORT)")
    return parser


def main(argv: list[str]) -> None:
    flags, gin_flags = common.split_gin_flags(argv)
    args = build_parser().parse_args(flags)
    common.check_gin_flags(gin_flags)
    if args.gpus_per_node < 1 or (args.nodes is not None and args.nodes < 1):
        raise LaunchError("--nodes and --gpus_per_node must be at least 1")
    if args.backend == "ssh":
        common.execute(ssh_plan(args, gin_flags), args.dry_run)
        return
    plan, script = slurm_plan(args, gin_flags)
    if args.dry_run:
        common.execute(plan, dry_run=True)
        return
    args.script.write_text(script)
    print(f"wrote {args.script}")
    common.execute([step for step in plan if not isinstance(step, str)], dry_run=False)


if __name__ == "__main__":
    sys.exit(common.main_guard(main))
