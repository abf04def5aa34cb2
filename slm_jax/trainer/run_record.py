"""What produced a run: resolved gin config, git SHA, package versions, device layout."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import subprocess
import sys

import gin
import jax

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "seqio", "tensorflow",
            "tensorflow-datasets", "gin-config", "sentencepiece", "numpy")
# slm_jax/trainer/run_record.py -> the checkout holding slm_jax/ (git asks there).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def git_sha() -> str | None:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout
        return (sha + ("-dirty" if dirty.strip() else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_layout(mesh) -> dict:
    devices = jax.devices()
    return {"backend": jax.default_backend(), "device_kind": devices[0].device_kind,
            "device_count": len(devices), "local_device_count": jax.local_device_count(),
            "process_count": jax.process_count(), "mesh": dict(mesh.shape)}


def write_run_record(run_dir: str, mesh, extra: dict | None = None) -> str:
    """Writes run_record.json and config.gin into run_dir (process 0); returns the path."""
    path = os.path.join(run_dir, "run_record.json")
    if jax.process_index() != 0:
        return path
    record = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "argv": sys.argv, "git_sha": git_sha(), "packages": package_versions(),
              "python": sys.version.split()[0], "devices": device_layout(mesh), **(extra or {})}
    # Restarts append, so every resumption of the run is on record.
    history = []
    if os.path.exists(path):
        with open(path) as f:
            history = json.load(f).get("history", [])
    with open(path, "w") as f:
        json.dump({**record, "history": history + [record]}, f, indent=1, default=str)
    with open(os.path.join(run_dir, "config.gin"), "w") as f:
        f.write(gin.config_str())
    return path
