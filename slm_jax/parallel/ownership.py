"""One owner per run directory: a second job writing into a running job's directory is refused.

A double launch (a retried job, two people, a queued resource that restarts while the old
VM still runs) would have two writers committing checkpoints, metrics and data state into
one directory. Every job that writes a directory (`train.run_dir`, `score.out_dir`,
`demo.work_dir`, `experiment.work_dir`) takes it first, with `own(path, binding=...)`:

* local filesystems: `flock` on `<dir>/.owner`, held for the life of the process and released
  by the kernel when it dies (a SIGKILLed run leaves no stale lock); the file also holds the
  owner record (host, pid, start) for the refusal message.
* object stores (`gs://`): no locks exist there, so a lease: the owner record `<dir>/.owner`
  is created with a create-only precondition (GCS `ifGenerationMatch=0`), refreshed by a
  heartbeat thread every `OwnershipConfig.heartbeat_s`, and taken over only when its
  heartbeat is older than `OwnershipConfig.stale_after_s`. The lease logic runs against a
  `RecordStore`; `LocalRecordStore` implements the same compare-and-swap on a local
  directory, which is how it is tested (`OwnershipConfig.backend = 'lease'`); both live in
  owner_records.py.

A second owner gets `RunOwnedError` naming the directory and the owner's host, pid and last
heartbeat, before it writes anything. A process that already owns a directory owns what is
under it (the experiment job holds its work_dir once for all the runs it trains). Multi-host
runs: process 0 takes the directory and tells the others through a broadcast whether it may
go on, so all of them refuse together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import functools
import inspect
import json
import logging
import os
import socket
import threading
import time
from typing import Iterator, Optional

import gin

from slm_jax.parallel import owner_records

OWNER_FILE = ".owner"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class OwnershipConfig:
    """How a job owns its directory.

    backend: 'auto' (flock for local paths, a lease for `gs://`), 'flock', 'lease' (the
      object-store protocol, also on local paths: how it is tested) or 'none' (no check:
      for filesystems without working locks, at your own risk).
    heartbeat_s: a lease owner rewrites its record this often.
    stale_after_s: a lease whose heartbeat is older than this is taken over (a dead owner's
      directory is free after this long); keep it several heartbeats long.
    """
    backend: str = "auto"
    heartbeat_s: float = 30.0
    stale_after_s: float = 300.0

    def __post_init__(self):
        if self.backend not in ("auto", "flock", "lease", "none"):
            raise ValueError(f"OwnershipConfig.backend={self.backend!r}; set it to 'auto', "
                             "'flock', 'lease' or 'none'.")
        if not 0 < self.heartbeat_s < self.stale_after_s:
            raise ValueError(f"OwnershipConfig.heartbeat_s={self.heartbeat_s} must be positive "
                             f"and below stale_after_s={self.stale_after_s}; set "
                             "OwnershipConfig.stale_after_s to several heartbeats.")


class RunOwnedError(RuntimeError):
    """The directory has another owner; the message names it."""


class OwnershipLostError(RuntimeError):
    """This process's lease was taken over: it must stop writing."""


def _record(**extra) -> dict:
    now = time.time()
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": now, "heartbeat": now,
            **extra}


def _when(seconds: Optional[float]) -> str:
    if not seconds:
        return "unknown"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def _refusal(path: str, binding: str, owner: dict) -> RunOwnedError:
    age = time.time() - owner.get("heartbeat", time.time())
    return RunOwnedError(
        f"{binding}={path!r} is in use by another job: host {owner.get('host', '?')}, pid "
        f"{owner.get('pid', '?')}, started {_when(owner.get('start'))}, last heartbeat "
        f"{_when(owner.get('heartbeat'))} ({age:.0f} s ago); wait for it to finish or stop it, "
        f"or set {binding} to another directory.")


# ----------------------------------------------------------------------------------------
# Local filesystems: flock.

class _FlockOwner:
    def __init__(self, path: str, binding: str):
        self.path, self.binding = path, binding
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        for ancestor in _ancestors(self.path):   # a run inside a running experiment's work_dir
            owner = _flock_holder(os.path.join(ancestor, OWNER_FILE))
            if owner is not None:
                raise _refusal(self.path, self.binding, owner)
        lock_path = os.path.join(self.path, OWNER_FILE)
        while True:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise _refusal(self.path, self.binding, _read_json_file(lock_path)) from None
            # Locked the file still at the path? (A refused job's release unlinks its own.)
            try:
                if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        self.created_record = os.fstat(fd).st_size == 0
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_record(lock="flock")).encode(), 0)
        self._fd = fd

    def check(self) -> None:
        pass  # a flock cannot be taken away while this process lives

    def release(self, untouched: bool = False) -> None:
        """The record stays (it says who wrote here last), unless the job wrote nothing else:
        a job refused for bad input leaves its directory as it found it."""
        if self._fd is None:
            return
        if untouched and self.created_record and os.listdir(self.path) == [OWNER_FILE]:
            os.unlink(os.path.join(self.path, OWNER_FILE))   # still locked: no one else took it
        os.close(self._fd)
        self._fd = None


def _ancestors(path: str) -> Iterator[str]:
    parent = os.path.dirname(path)
    while parent and parent != path:
        yield parent
        path, parent = parent, os.path.dirname(parent)


def _read_json_file(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.loads(f.read() or "{}")
    except (OSError, ValueError):
        return {}


def _flock_holder(lock_path: str) -> Optional[dict]:
    """The record of whoever holds `lock_path`'s flock, or None when nobody does."""
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except OSError:
        return _read_json_file(lock_path)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------
# Object stores: a lease over a record with compare-and-swap (owner_records.py).

class _LeaseOwner:
    def __init__(self, store: owner_records.RecordStore, path: str, binding: str,
                 config: OwnershipConfig):
        self.store, self.path, self.binding, self.config = store, path, binding, config
        self._generation: Optional[int] = None
        self._record = _record(lock="lease")
        self._stop = threading.Event()
        self._lost: Optional[str] = None
        self._thread: Optional[threading.Thread] = None

    def acquire(self) -> None:
        body = json.dumps(self._record).encode()
        generation = self.store.create(body)
        while generation is None:
            current = self.store.read()
            if current is None:   # released between our create and read
                generation = self.store.create(body)
                continue
            owner = json.loads(current[0] or b"{}")
            if time.time() - owner.get("heartbeat", 0) <= self.config.stale_after_s \
                    and not owner.get("released"):
                raise _refusal(self.path, self.binding, owner)
            logging.warning("%s=%r: taking over the lease of host %s pid %s (last heartbeat "
                            "%s, older than OwnershipConfig.stale_after_s=%s)", self.binding,
                            self.path, owner.get("host"), owner.get("pid"),
                            _when(owner.get("heartbeat")), self.config.stale_after_s)
            generation = self.store.replace(body, current[1])
            if generation is None:   # another taker won the race: read it again
                continue
        self._generation = generation
        self._thread = threading.Thread(target=self._beat, name="run-owner-heartbeat",
                                        daemon=True)
        self._thread.start()

    def _write(self, **changes) -> bool:
        self._record.update(changes)
        generation = self.store.replace(json.dumps(self._record).encode(), self._generation)
        if generation is None:
            current = self.store.read()
            owner = json.loads(current[0]) if current else {}
            self._lost = (f"{self.binding}={self.path!r} was taken over by host "
                          f"{owner.get('host', '?')} pid {owner.get('pid', '?')} (this job's "
                          "heartbeat was older than OwnershipConfig.stale_after_s); stopping "
                          "without writing more.")
            logging.error("%s", self._lost)
            return False
        self._generation = generation
        return True

    def _beat(self) -> None:
        while not self._stop.wait(self.config.heartbeat_s):
            try:
                if not self._write(heartbeat=time.time()):
                    return
            except Exception as e:  # noqa: BLE001  (a transient store error: try again)
                logging.warning("run owner heartbeat of %s failed: %s", self.path, e)

    def check(self) -> None:
        if self._lost:
            raise OwnershipLostError(self._lost)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._lost is None and self._generation is not None:
            self._write(heartbeat=time.time(), released=True)   # free at once, not after stale_after_s


# ----------------------------------------------------------------------------------------

class _HeldByProcessZero:
    def check(self) -> None:
        pass


_held: dict[str, object] = {}   # directory -> its owner, for this process
_held_lock = threading.Lock()


def _covering(path: str):
    for directory, owner in _held.items():
        if path == directory or path.startswith(directory.rstrip("/") + "/"):
            return owner
    return None


def _make_owner(path: str, binding: str, config: OwnershipConfig):
    backend = config.backend
    if backend == "auto":
        backend = "lease" if path.startswith("gs://") else "flock"
    if backend == "flock":
        if "://" in path:
            raise ValueError(f"{binding}={path!r} is not on a local filesystem, where flock "
                             "works; set OwnershipConfig.backend='lease' (or 'auto').")
        return _FlockOwner(path, binding)
    store = (owner_records.GcsRecordStore(path, OWNER_FILE) if path.startswith("gs://")
             else owner_records.LocalRecordStore(path, OWNER_FILE))
    return _LeaseOwner(store, path, binding, config)


def _make_directory(path: str, binding: str) -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{binding}={path!r} is a file, not a directory; set {binding} to a "
                         "directory (it is created if missing).")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{binding}={path!r} cannot be created ({e.strerror}); set {binding} "
                         "to a writable directory.") from e


def _normalise(path: str) -> str:
    return path.rstrip("/") if "://" in path else os.path.abspath(path)


def _is_first_process() -> bool:
    import jax
    return jax.process_index() == 0


def _agree(ok: bool, error: Optional[Exception]) -> None:
    """Multi-host: process 0 decided; every process learns it and refuses together."""
    import jax
    if jax.process_count() == 1:
        if error is not None:
            raise error
        return
    import numpy as np
    from jax.experimental import multihost_utils
    decided = bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))
    if error is not None:
        raise error
    if not decided:
        raise RunOwnedError("process 0 could not take the run directory (its log says why); "
                            "this process stops with it.")


@contextlib.contextmanager
def own(path: str, *, binding: str, config: Optional[OwnershipConfig] = None):
    """Holds `path` (created if needed) for the `with` block; raises RunOwnedError when
    another job holds it. Nested calls for `path` or a directory under it are free."""
    config = config or OwnershipConfig()
    path = _normalise(path)
    if config.backend == "none" or _covering(path) is not None:
        yield
        return
    owner, error = None, None
    created = "://" not in path and not os.path.exists(path)
    if _is_first_process():
        if "://" not in path:
            _make_directory(path, binding)
        owner = _make_owner(path, binding, config)
        try:
            owner.acquire()
        except RunOwnedError as e:
            owner, error = None, e
    _agree(owner is not None or not _is_first_process(), error)
    with _held_lock:   # processes > 0 hold it through process 0: nested calls stay free
        _held[path] = owner if owner is not None else _HeldByProcessZero()
    failed = True
    try:
        yield
        failed = False
    finally:
        with _held_lock:
            _held.pop(path, None)
        if isinstance(owner, _FlockOwner):
            owner.release(untouched=failed)
            if failed and created and not os.listdir(path):
                os.rmdir(path)
        elif owner is not None:
            owner.release()


def check(path: str) -> None:
    """Raises OwnershipLostError when this process's lease covering `path` was taken over
    (called before each checkpoint commit, so a displaced job writes nothing more)."""
    owner = _covering(_normalise(path))
    if owner is not None:
        owner.check()


def owns(param: str, binding: str):
    """Decorates a job whose argument `param` is the directory it writes: the job runs
    owning it (`own`). Put it under `@gin.configurable`, which reads the signature through it."""
    def wrap(job):
        signature = inspect.signature(job)

        @functools.wraps(job)
        def owned(*args, **kwargs):
            bound = signature.bind_partial(*args, **kwargs).arguments
            path = bound.get(param, signature.parameters[param].default)
            if path is gin.REQUIRED:
                return job(*args, **kwargs)   # gin's own error names the missing binding
            with own(path, binding=binding):
                return job(*args, **kwargs)
        return owned
    return wrap
