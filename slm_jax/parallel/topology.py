"""The devices of a TPU slice that is not here: libtpu's topology descriptions, which the
TPU compiler accepts as the devices of a mesh, so any host (a laptop, a CPU CI runner)
compiles the exact TPU program of a run.

    devices = topology.tpu_devices("v5p:4x4x4", num_slices=2)
    runtime = Runtime.from_config(mesh_config, devices=devices)

Needs libtpu (`pip install -r requirements-tpu.txt`); nothing runs on the devices.
"""

from __future__ import annotations

import os
import re

import jax

# Chip generations whose TPU VMs run one JAX device per chip over both TensorCores
# ("megacore"); without it libtpu describes a v4 slice with two devices per chip, a
# program live hosts never run (MaxText's train_compile asks for it the same way).
_MEGACORE = ("v4", "v5p")
_NAME = re.compile(r"^(v4|v5e|v5p|v6e):\d+(x\d+)+$")
EXAMPLES = "v4:2x2x1, v5e:2x2, v5e:4x4, v5p:2x2x1, v5p:4x4x4, v6e:2x2, v6e:16x16"


def tpu_devices(name: str, num_slices: int = 1, *, binding: str = "compile.topology"):
    """The devices of `num_slices` slices of topology `name` ("v5p:4x4x4": generation and
    chips per dimension); each carries `slice_index` when num_slices > 1."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{binding}={name!r} is not a TPU topology (generation:chips per "
                         f"dimension, e.g. {EXAMPLES}); set {binding} to one.")
    try:
        from jax.experimental import topologies
        import libtpu  # noqa: F401  (the TPU compiler; its absence is the common failure)
    except ImportError as e:
        raise ValueError(f"{binding}={name!r} needs the TPU compiler (libtpu): run "
                         "`pip install -r requirements-tpu.txt`.") from e
    # libtpu admits one process per host (a lock file) to guard the chips; describing a
    # topology touches none, so a compile may run beside another JAX process or compile.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    kwargs = {"chip_config_name": "megacore"} if name.split(":")[0] in _MEGACORE else {}
    try:
        description = topologies.get_topology_desc(platform="tpu", topology_name=name,
                                                    num_slices=num_slices, **kwargs)
    except jax.errors.JaxRuntimeError as e:
        reason = str(e).split("\n")[0].removeprefix("INVALID_ARGUMENT: ")
        raise ValueError(f"{binding}={name!r}: libtpu does not know this topology ({reason}); "
                         f"use one it knows, e.g. {EXAMPLES}.") from e
    return list(description.devices)


