"""Cloud TPU VM launcher: create a slice, install the project on every host, run, tail, delete.

    python launch/tpu_vm.py check  --accelerator_type v5p-128 -- --gin_file=gin/runs/rho1_math_1b.gin
    python launch/tpu_vm.py create --name N --zone Z --accelerator_type v5p-128 [--queued --spot] \
        [-- GIN FLAGS: compiled for the slice first]
    python launch/tpu_vm.py setup  --name N --zone Z [--repo_url URL]
    python launch/tpu_vm.py run    --name N --zone Z -- --gin_file=... --gin.train.run_dir=gs://...
    python launch/tpu_vm.py logs   --name N --zone Z [--worker 0]
    python launch/tpu_vm.py delete --name N --zone Z [--queued] [--quiet]

`check` compiles the run's programs for the slice on this machine (the `compile` job; needs
`pip install -r requirements-tpu.txt`, no TPU) and fails when one does not fit; `create` and
`run` do the same first when they are given the run's gin flags and the accelerator type
(--skip_check to go ahead without).

Every subcommand takes --dry_run (print the gcloud commands, run nothing) and
--num_slices N (a multislice job: N slices of --accelerator_type in one queued
resource, joined over the data-center network).
Each host runs one `python -m slm_jax.main` with the same flags; jax takes the
process count and ids from the TPU metadata, and `run` names the coordinator
(worker 0 of slice 0) on a port the default TPU firewall opens (--coordinator_port).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as `python launch/tpu_vm.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from launch import common  # noqa: E402
from launch.common import LaunchError  # noqa: E402

# Paths on the workers, relative to the home directory and left unquoted so `~` expands.
REMOTE_REPO = "~/slm-jax"
REMOTE_VENV = "~/slm-jax-venv"
REMOTE_TARBALL_NAME = "slm-jax.tgz"
REMOTE_TARBALL = f"~/{REMOTE_TARBALL_NAME}"
LOG_FILE = "~/slm_jax.log"
PID_FILE = "~/slm_jax.pid"
# jax >= 0.8.1 puts the coordinator of a TPU slice on port 8482, which the firewall rule GCP
# creates with a pod slice does not open (reported for v6e: 8470, 8471, 8474, 8476, 11211), so
# jax.distributed.initialize() hangs (jax-ml/jax#35905). 8476 was jax's port before.
DEFAULT_COORDINATOR_PORT = 8476
METADATA_URL = "http://metadata.google.internal/computeMetadata/v1/instance/attributes"
# What `setup --copy` leaves out of the tarball: history, caches and local run outputs.
TAR_EXCLUDES = (".git", "__pycache__", "./runs", "./.whl", "./.venv", "./.venv-gpu",
                "./.pytest_cache")


@dataclass(frozen=True)
class TpuGeneration:
    counts_cores: bool     # the number in the accelerator type counts TensorCores, not chips
    cores_per_chip: int
    chips_per_host: int
    runtime_version: str   # the documented default software version for JAX


# https://cloud.google.com/tpu/docs/runtimes and the per-generation system architecture pages.
GENERATIONS = {
    "v2": TpuGeneration(True, 2, 4, "tpu-ubuntu2204-base"),
    "v3": TpuGeneration(True, 2, 4, "tpu-ubuntu2204-base"),
    "v4": TpuGeneration(True, 2, 4, "tpu-ubuntu2204-base"),
    "v5p": TpuGeneration(True, 2, 4, "v2-alpha-tpuv5"),
    "v5litepod": TpuGeneration(False, 1, 8, "v2-alpha-tpuv5-lite"),
    "v6e": TpuGeneration(False, 1, 8, "v2-alpha-tpuv6e"),
}
KNOWN_TYPES = ", ".join(f"{name}-N" for name in GENERATIONS)


@dataclass(frozen=True)
class SliceShape:
    hosts: int
    chips_per_host: int

    def describe(self) -> str:
        hosts = f"{self.hosts} host{'s' * (self.hosts != 1)}"
        return f"{hosts} x {self.chips_per_host} chip{'s' * (self.chips_per_host != 1)}"


def parse_accelerator_type(accelerator_type: str) -> tuple[TpuGeneration, int]:
    match = re.fullmatch(r"(v\w+?)-(\d+)", accelerator_type)
    if not match or match.group(1) not in GENERATIONS or int(match.group(2)) == 0:
        raise LaunchError(f"--accelerator_type={accelerator_type}: unknown TPU type; "
                          f"expected one of {KNOWN_TYPES} (e.g. v4-8, v5p-128, v5litepod-16)")
    return GENERATIONS[match.group(1)], int(match.group(2))


def slice_shape(accelerator_type: str) -> SliceShape:
    """Hosts and chips per host: v4-32 -> 4 x 4, v5p-128 -> 16 x 4, v5litepod-16 -> 2 x 8."""
    generation, count = parse_accelerator_type(accelerator_type)
    chips, odd_cores = divmod(count, generation.cores_per_chip)
    per_host = generation.chips_per_host
    if odd_cores or (chips > per_host and chips % per_host):
        raise LaunchError(f"--accelerator_type={accelerator_type}: not a slice size; a multi-host "
                          f"slice is whole hosts of {per_host} chips"
                          + (f" ({per_host * generation.cores_per_chip} cores)"
                             if generation.counts_cores else ""))
    if chips <= per_host:
        return SliceShape(1, chips)
    return SliceShape(chips // per_host, per_host)


# Chips -> the slice's default topology (GCP's per-generation tables): 3D tori for v4/v5p,
# 2D for v5e/v6e. --topology overrides it for a custom shape.
_TOPOLOGY_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
                256: "4x8x8", 512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}
_TOPOLOGY_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
                256: "16x16"}
_COMPILER_NAMES = {"v4": "v4", "v5p": "v5p", "v5litepod": "v5e", "v6e": "v6e"}


def compile_topology(accelerator_type: str) -> str:
    """The `compile.topology` of a slice: v5p-128 -> v5p:4x4x4, v5litepod-16 -> v5e:4x4."""
    generation, count = parse_accelerator_type(accelerator_type)
    name = _COMPILER_NAMES.get(re.match(r"v\w+?(?=-)", accelerator_type).group(0))
    chips = count // generation.cores_per_chip if generation.counts_cores else count
    shapes = _TOPOLOGY_2D if name in ("v5e", "v6e") else _TOPOLOGY_3D
    if name is None or chips not in shapes:
        raise LaunchError(f"--accelerator_type={accelerator_type}: no default topology to compile "
                          "for; pass --topology (e.g. v5p:4x4x4) or --skip_check")
    return f"{name}:{shapes[chips]}"


def check_plan(args, gin_flags: list[str]) -> list:
    """The `compile` job for the slice, run here: non-zero (and the plan stops) when a
    program of the run does not fit the slice's HBM."""
    if not gin_flags:
        raise LaunchError("check needs the run's gin flags after `--` (e.g. -- "
                          "--gin_file=gin/runs/rho1_math_1b.gin)")
    topology = args.topology or compile_topology(args.accelerator_type)
    return [["env", f"PYTHONPATH={common.REPO_ROOT}", sys.executable, "-m", "slm_jax.main",
             *_with_num_slices(args, gin_flags),
             "--gin.run.job=compile", f"--gin.compile.topology={topology}",
             "--gin.compile.count_flops=False"]]


def default_runtime_version(accelerator_type: str) -> str:
    return parse_accelerator_type(accelerator_type)[0].runtime_version


# --- gcloud commands ------------------------------------------------------------------------

def _gcloud(args, words: list[str], *flags: str) -> list[str]:
    """`gcloud compute tpus WORDS --zone --project FLAGS`."""
    project = [f"--project={args.project}"] if args.project else []
    return ["gcloud", "compute", "tpus", *words, f"--zone={args.zone}", *project, *flags]


def _multislice(args) -> bool:
    return args.num_slices > 1


def _ssh(args, worker: str, command: str, node: str = "all") -> list[str]:
    """ssh to `worker` (an index or `all`) of the slice, or of slice `node` of a multislice job."""
    if _multislice(args):  # its slices are nodes of one queued resource
        return _gcloud(args, ["queued-resources", "ssh", args.name], f"--node={node}",
                       f"--worker={worker}", "--command", command)
    return _gcloud(args, ["tpu-vm", "ssh", args.name], f"--worker={worker}", "--command", command)


def _scp_to_all(args, local: str, remote: str) -> list[str]:
    if _multislice(args):
        return _gcloud(args, ["queued-resources", "scp", local, f"{args.name}:{remote}"],
                       "--node=all", "--worker=all")
    return _gcloud(args, ["tpu-vm", "scp", local, f"{args.name}:{remote}"], "--worker=all")


def create_plan(args) -> list:
    shape = slice_shape(args.accelerator_type)
    version = args.runtime_version or default_runtime_version(args.accelerator_type)
    tier = ["--spot"] if args.spot else ["--reserved"] if args.reserved else []
    if _multislice(args):
        # Nodes {name}-0 .. {name}-(N-1); GCP writes the MEGASCALE_* settings that join
        # them into each VM's tpu-env metadata, where libtpu and jax read them.
        plan = [f"# {args.num_slices} slices of {args.accelerator_type}: {shape.describe()} each"]
        nodes = [f"--node-count={args.num_slices}", f"--node-prefix={args.name}"]
    else:
        plan = [f"# {args.accelerator_type}: {shape.describe()}"]
        nodes = [f"--node-id={args.name}"]
    if args.queued:
        plan.append(_gcloud(args, ["queued-resources", "create", args.name], *nodes,
                            f"--accelerator-type={args.accelerator_type}",
                            f"--runtime-version={version}", *tier))
        plan.append(f"# usable once `gcloud compute tpus queued-resources describe {args.name} "
                    f"--zone={args.zone}` shows state ACTIVE")
    else:
        plan.append(_gcloud(args, ["tpu-vm", "create", args.name],
                            f"--accelerator-type={args.accelerator_type}",
                            f"--version={version}", *tier))
    return plan


def _install_python(python: str) -> list[str]:
    """The TPU images ship Python 3.10; the pinned requirements need 3.11, so apt adds it."""
    if not re.fullmatch(r"python3\.\d+", python):
        return []  # a path to an interpreter the user provides
    apt = "sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600"
    return [f"{{ {python} -c 'import ensurepip' 2>/dev/null || "
            f"{{ {apt} update -qq && {apt} install -y -qq {python} {python}-venv; }}; }}"]


def setup_plan(args) -> list:
    pip = f"{REMOTE_VENV}/bin/pip"
    plan, fetch = [], []
    if args.repo_url:
        branch = ["--branch", args.branch] if args.branch else []
        fetch = [f"rm -rf {REMOTE_REPO}",
                 f"git clone --depth 1 {common.join([*branch, args.repo_url])} {REMOTE_REPO}"]
    else:
        # One tarball instead of scp --recurse: one transfer per host, and no .git or run outputs.
        tarball = str(Path(tempfile.gettempdir()) / f"slm-jax-{args.name}.tgz")
        plan += [["tar", "-czf", tarball, *(f"--exclude={e}" for e in TAR_EXCLUDES),
                  "-C", str(common.REPO_ROOT), "."],
                 _scp_to_all(args, tarball, REMOTE_TARBALL_NAME)]
        fetch = [f"rm -rf {REMOTE_REPO}", f"mkdir -p {REMOTE_REPO}",
                 f"tar -xzf {REMOTE_TARBALL} -C {REMOTE_REPO}", f"rm {REMOTE_TARBALL}"]
    install = [*_install_python(args.python),
               f"{common.quote(args.python)} -m venv {REMOTE_VENV}",
               f"{pip} install --quiet --upgrade pip",
               f"{pip} install --quiet -r {REMOTE_REPO}/requirements-tpu.txt"]
    plan.append(_ssh(args, "all", " && ".join(fetch + install)))
    return plan


def _warn_if_local_run_dir(gin_flags: list[str]) -> None:
    for flag in gin_flags:
        name, _, value = flag.partition("=")
        if name == "--gin.train.run_dir" and not value.strip("'\"").startswith("gs://"):
            print(f"warning: {flag}: every host needs the same run_dir; use a gs:// path",
                  file=sys.stderr)


def _with_num_slices(args, gin_flags: list[str]) -> list[str]:
    """The gin flags plus MeshConfig.num_slices for a multislice job (one the user gave must agree)."""
    binding = "--gin.MeshConfig.num_slices"
    given = [f.partition("=")[2] for f in gin_flags if f.partition("=")[0] == binding]
    if any(value != str(args.num_slices) for value in given):
        raise LaunchError(f"{binding}={given[-1]} contradicts --num_slices={args.num_slices}; "
                          "drop the gin binding, `run` sets it")
    if args.num_slices == 1 or given:
        return gin_flags
    return [*gin_flags, f"{binding}={args.num_slices}"]


def run_plan(args, gin_flags: list[str]) -> list:
    _warn_if_local_run_dir(gin_flags)
    gin_flags = _with_num_slices(args, gin_flags)
    # A second trainer on the same host would fail to open the TPU; say so plainly instead.
    already_running = (f"if [ -f {PID_FILE} ] && grep -qs slm_jax /proc/$(cat {PID_FILE})/cmdline; "
                       f"then echo \"slm_jax is already running (pid $(cat {PID_FILE})); "
                       f"stop it first\" >&2; exit 1; fi")
    start = common.detached(f"{REMOTE_VENV}/bin/python", ["-m", "slm_jax.main", *gin_flags],
                            log=LOG_FILE, env=common.parse_env(args.env), pid_file=PID_FILE)
    return [_ssh(args, "all", f"{already_running}; {_read_tpu_env()}; "
                              f"{_check_slice_count(args.num_slices)}; "
                              f"{_export_coordinator(args.coordinator_port)}; "
                              f"cd {REMOTE_REPO} || exit 1; {start}")]


def _metadata(key: str) -> str:
    """Shell that prints the VM's metadata attribute `key` (empty when it has none)."""
    return f"curl -sf -m 10 -H Metadata-Flavor:Google {METADATA_URL}/{key}"


def _read_tpu_env() -> str:
    """Shell that keeps the VM's tpu-env metadata (lines `NAME: 'value'`) in $tpu_env."""
    return f"tpu_env=$({_metadata('tpu-env')})"


def _tpu_env(variable: str) -> str:
    """Shell that prints `variable` of $tpu_env, without quotes or a :port (empty if unset)."""
    return (f"printf '%s\\n' \"$tpu_env\" | sed -n \"s/^{variable}: *'\\{{0,1\\}}"
            f"\\([^':]*\\).*/\\1/p\"")


def _check_slice_count(num_slices: int) -> str:
    """Shell that stops when the VM belongs to another number of slices than --num_slices,
    which would build a mesh whose data axis does not match the slices."""
    return (f"slices=$({_tpu_env('MEGASCALE_NUM_SLICES')}); "
            f"if [ \"${{slices:-1}}\" != {num_slices} ]; then echo \"this TPU VM is one of "
            f"${{slices:-1}} slices; pass --num_slices=${{slices:-1}}, not {num_slices}\" >&2; "
            "exit 1; fi")


def _export_coordinator(port: int) -> str:
    """Shell that exports JAX_COORDINATOR_ADDRESS=<worker 0 of slice 0>:<port>.

    jax would pick port 8482, which the TPU firewall blocks (see
    DEFAULT_COORDINATOR_PORT), and slm_jax joins jax.distributed only when the
    environment names a coordinator or a cluster. jax still takes the process
    count and ids from the metadata. The host is the one jax would choose:
    MEGASCALE_COORDINATOR_ADDRESS of a multislice job, else the slice's first
    worker (worker-network-endpoints entries are `host` or `name:id:ip`).
    """
    first_worker = f"{_metadata('worker-network-endpoints')} | cut -d, -f1 | awk -F: '{{print $NF}}'"
    return (f"coordinator=$({_tpu_env('MEGASCALE_COORDINATOR_ADDRESS')}); "
            f"[ -n \"$coordinator\" ] || coordinator=$({first_worker}); "
            f"[ -z \"$coordinator\" ] || export JAX_COORDINATOR_ADDRESS=$coordinator:{port}")


def logs_plan(args) -> list:
    return [_ssh(args, args.worker, f"tail -n {args.lines} -F {LOG_FILE}", node=args.slice)]


def stop_plan(args) -> list:
    # The trainer is a session leader (setsid), so its pid is also its process group.
    pid = f"$(cat {PID_FILE})"
    return [_ssh(args, "all", f"[ -f {PID_FILE} ] || exit 0; "
                              f"kill -TERM -- -{pid} 2>/dev/null || kill -TERM {pid} 2>/dev/null; "
                              f"rm -f {PID_FILE}")]


def delete_plan(args) -> list:
    quiet = ["--quiet"] if args.quiet else []
    if args.queued:  # --force also deletes the TPU VM the queued resource holds
        return [_gcloud(args, ["queued-resources", "delete", args.name], "--force", *quiet)]
    return [_gcloud(args, ["tpu-vm", "delete", args.name], *quiet)]


# --- command line ---------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    common_flags = argparse.ArgumentParser(add_help=False)
    common_flags.add_argument("--name", required=True, help="TPU VM (and queued resource) name")
    common_flags.add_argument("--zone", required=True, help="e.g. us-central2-b")
    common_flags.add_argument("--project", help="GCP project (default: gcloud's configured one)")
    common_flags.add_argument("--dry_run", action="store_true",
                              help="print the commands, one per line, and run nothing")
    common_flags.add_argument("--num_slices", type=int, default=1,
                              help="slices of a multislice job (a queued resource of N nodes, "
                                   "the data axis across them); the same on every subcommand")

    parser = argparse.ArgumentParser(
        prog="tpu_vm.py", description="Run slm_jax on a Cloud TPU VM slice.",
        epilog="run: gin flags for slm_jax.main go after `--`.")
    sub = parser.add_subparsers(dest="command", required=True)

    check_flags = argparse.ArgumentParser(add_help=False)
    check_flags.add_argument("--topology", help="compile for this topology instead of the "
                             "accelerator type's default (e.g. v5p:4x8x8)")
    check_flags.add_argument("--skip_check", action="store_true",
                             help="do not compile the run for the slice first")

    check = sub.add_parser("check", parents=[check_flags],
                           help="compile the run (gin flags after `--`) for a slice, here")
    check.add_argument("--accelerator_type", help=f"{KNOWN_TYPES}, e.g. v5p-128")
    check.add_argument("--num_slices", type=int, default=1, help="slices of a multislice job")
    check.add_argument("--dry_run", action="store_true", help="print the command, run nothing")

    create = sub.add_parser("create", parents=[common_flags, check_flags],
                            help="create the TPU VM slice")
    create.add_argument("--accelerator_type", required=True,
                        help=f"{KNOWN_TYPES}, e.g. v4-8, v5p-128, v5litepod-16")
    create.add_argument("--runtime_version", help="TPU software version (default: per generation)")
    create.add_argument("--queued", action="store_true",
                        help="request a queued resource instead of creating the VM directly")
    tier = create.add_mutually_exclusive_group()
    tier.add_argument("--spot", action="store_true", help="spot capacity (can be preempted)")
    tier.add_argument("--reserved", action="store_true", help="use the project's reservation")

    setup = sub.add_parser("setup", parents=[common_flags],
                           help="install the project and jax[tpu] on every worker")
    setup.add_argument("--repo_url", help="git clone this on the workers instead of copying "
                                          "this checkout")
    setup.add_argument("--branch", help="branch or tag to clone with --repo_url")
    setup.add_argument("--python", default="python3.11",
                       help="interpreter for the venv; python3.N is apt-installed when missing")

    run = sub.add_parser("run", parents=[common_flags, check_flags],
                         help="start slm_jax.main on every worker, detached")
    run.add_argument("--accelerator_type", help="the slice's type: the run is compiled for it "
                                                "first (see check)")
    run.add_argument("--env", action="append", metavar="KEY=VALUE",
                     help="environment variable for the trainer (repeatable)")
    run.add_argument("--coordinator_port", type=int, default=DEFAULT_COORDINATOR_PORT,
                     help="jax.distributed coordinator port on worker 0; the default is one "
                          f"GCP's TPU firewall rule opens (default {DEFAULT_COORDINATOR_PORT})")

    logs = sub.add_parser("logs", parents=[common_flags], help="follow a worker's log")
    logs.add_argument("--worker", default="0", help="worker index, or `all` (default 0)")
    logs.add_argument("--lines", type=int, default=100, help="lines of history to show first")
    logs.add_argument("--slice", default="0", help="with --num_slices: the slice (default 0)")

    sub.add_parser("stop", parents=[common_flags], help="stop the trainer on every worker")

    delete = sub.add_parser("delete", parents=[common_flags], help="delete the slice")
    delete.add_argument("--queued", action="store_true",
                        help="it was created with --queued (deletes the queued resource)")
    delete.add_argument("--quiet", action="store_true", help="do not ask for confirmation")
    return parser


PLANS = {"create": create_plan, "setup": setup_plan, "logs": logs_plan, "stop": stop_plan,
         "delete": delete_plan}


def check_args(args) -> None:
    """Values argparse cannot check, each refused in one line naming its flag."""
    if args.num_slices < 1:
        raise LaunchError(f"--num_slices={args.num_slices} must be at least 1")
    needs_queued = args.command in ("create", "delete") and _multislice(args) and not args.queued
    if needs_queued:
        raise LaunchError(f"--num_slices={args.num_slices} needs --queued: the slices of a "
                          "multislice job are one queued resource")
    port = getattr(args, "coordinator_port", DEFAULT_COORDINATOR_PORT)
    if not 1 <= port <= 65535:
        raise LaunchError(f"--coordinator_port={port} is not a TCP port (1-65535)")


def _checked_first(args, gin_flags: list[str]) -> list:
    """`check`'s plan ahead of create/run when it can run: gin flags and a slice type."""
    if args.skip_check or not gin_flags:
        return []
    if not (args.accelerator_type or args.topology):
        print("warning: not compiled for the slice first: pass --accelerator_type (or "
              "--topology), or --skip_check", file=sys.stderr)
        return []
    return check_plan(args, gin_flags)


def main(argv: list[str]) -> None:
    flags, gin_flags = common.split_gin_flags(argv)
    args = build_parser().parse_args(flags)
    check_args(args)
    if args.command == "check":
        if not (args.accelerator_type or args.topology):
            raise LaunchError("check needs --accelerator_type (or --topology)")
        plan = check_plan(args, common.check_gin_flags(gin_flags))
    elif args.command == "run":
        gin_flags = common.check_gin_flags(gin_flags)
        plan = run_plan(args, gin_flags)
        plan = _checked_first(args, gin_flags) + plan
    elif args.command == "create":
        plan = _checked_first(args, common.check_gin_flags(gin_flags) if gin_flags else [])
        plan += create_plan(args)
    elif gin_flags:
        raise LaunchError(f"`{args.command}` takes no gin flags; only check, create and run do")
    else:
        plan = PLANS[args.command](args)
    common.execute(plan, args.dry_run)


if __name__ == "__main__":
    sys.exit(common.main_guard(main))
