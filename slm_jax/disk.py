"""A full disk, said once: which directory is full, how much the write needed, what is intact.

Checkpoints, metrics.jsonl and the scorer's shards fail on a full disk (or quota) with
`DiskFullError`, one line, instead of the writer's traceback and whatever half-written file it
left behind; the writers keep their previous files whole (orbax commits a checkpoint by
renaming its temporary directory; the scorer renames a finished shard into place).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from typing import Callable, Iterator, Optional, Union

_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# tensorstore and TensorFlow report ENOSPC in their own words.
_FULL_WORDS = ("No space left on device", "Disk quota exceeded")


class DiskFullError(RuntimeError):
    """A write failed for lack of space; the message names the directory and the need."""


def is_disk_full(err: BaseException) -> bool:
    """Whether `err`, or an exception it was raised from, is a lack of space."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _FULL_ERRNOS:
            return True
        if any(words in str(err) for words in _FULL_WORDS):
            return True
        err = err.__cause__ or err.__context__
    return False


def free_bytes(path: str) -> Optional[int]:
    """Free bytes on the filesystem holding `path` (or its nearest existing parent);
    None for object stores, which have no such limit."""
    if "://" in path:
        return None
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return shutil.disk_usage(path).free


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MB"


def full_disk_error(directory: str, what: str, *, needed: Optional[int] = None,
                    intact: str = "") -> DiskFullError:
    free = free_bytes(directory)
    need = f"it needs ~{_mb(needed)}" if needed else "it needs more"
    has = f", {_mb(free)} free" if free is not None else ""
    return DiskFullError(f"no space left in {directory} for {what} ({need}{has}); "
                         f"{intact + '; ' if intact else ''}free space there (or write elsewhere) "
                         "and run the same command again.")


@contextlib.contextmanager
def writing(directory: str, what: str, *, needed: Optional[int] = None,
            intact: Union[str, Callable[[], str]] = "") -> Iterator[None]:
    """Turns a full disk inside the block into `full_disk_error(...)`; `intact` (what is
    still whole) may be a function, asked only then."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as e:  # noqa: BLE001  (orbax/tensorstore/TF raise their own types)
        if is_disk_full(e):
            raise full_disk_error(directory, what, needed=needed,
                                  intact=intact() if callable(intact) else intact) from e
        raise


def check_space(directory: str, what: str, needed: int, *, intact: str = "") -> None:
    """Refuses a write of `needed` bytes before it starts when the disk cannot hold it."""
    free = free_bytes(directory)
    if free is not None and free < needed:
        raise full_disk_error(directory, what, needed=needed, intact=intact)
