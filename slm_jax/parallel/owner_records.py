"""Owner records with compare-and-swap: what a lease on an object store needs (ownership.py).

A `RecordStore` is one object with a generation number that changes on every write, as GCS
objects have: create only if absent, read with the generation, replace only at a given
generation. `GcsRecordStore` is GCS's own (`ifGenerationMatch`); `LocalRecordStore` gives the
same semantics on a local directory, so the lease logic is tested without an object store.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from typing import Optional, Protocol


class RecordStore(Protocol):
    """One object with a generation number that changes on every write (GCS semantics)."""

    def create(self, body: bytes) -> Optional[int]:
        """Writes the object only if it does not exist; its generation, or None."""

    def read(self) -> Optional[tuple[bytes, int]]:
        """(body, generation), or None when there is no object."""

    def replace(self, body: bytes, generation: int) -> Optional[int]:
        """Writes only if the object is still at `generation`; the new one, or None."""


class LocalRecordStore:
    """`RecordStore` on a local directory: generation-matched writes under a short flock,
    so the lease logic runs (and is tested) without an object store."""

    def __init__(self, directory: str, name: str):
        self.path = os.path.join(directory, name)
        self._mutex = self.path + ".cas"

    @contextlib.contextmanager
    def _exclusive(self):
        fd = os.open(self._mutex, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, body: bytes, generation: int) -> int:
        tmp = f"{self.path}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(json.dumps({"generation": generation, "body": body.decode()}).encode())
        os.replace(tmp, self.path)
        return generation

    def read(self) -> Optional[tuple[bytes, int]]:
        try:
            with open(self.path, "rb") as f:
                stored = json.loads(f.read())
        except FileNotFoundError:
            return None
        return stored["body"].encode(), stored["generation"]

    def create(self, body: bytes) -> Optional[int]:
        with self._exclusive():
            return None if self.read() is not None else self._write(body, 1)

    def replace(self, body: bytes, generation: int) -> Optional[int]:
        with self._exclusive():
            current = self.read()
            if current is None or current[1] != generation:
                return None
            return self._write(body, generation + 1)


class GcsRecordStore:
    """`RecordStore` on Google Cloud Storage: `ifGenerationMatch` preconditions
    (google-cloud-storage, imported only for gs:// directories)."""

    def __init__(self, directory: str, name: str):
        try:
            from google.cloud import storage
            from google.api_core import exceptions
        except ImportError as e:
            raise RuntimeError(
                f"owning {directory} needs google-cloud-storage (pip install "
                "google-cloud-storage), or set OwnershipConfig.backend='none'.") from e
        bucket, _, prefix = directory[len("gs://"):].partition("/")
        self._blob_name = f"{prefix.rstrip('/')}/{name}" if prefix else name
        self._bucket = storage.Client().bucket(bucket)
        self._failed = exceptions.PreconditionFailed
        self._missing = exceptions.NotFound

    def _upload(self, body: bytes, generation: int) -> Optional[int]:
        blob = self._bucket.blob(self._blob_name)
        try:
            blob.upload_from_string(body, content_type="application/json",
                                    if_generation_match=generation)
        except self._failed:
            return None
        return blob.generation

    def create(self, body: bytes) -> Optional[int]:
        return self._upload(body, 0)

    def read(self) -> Optional[tuple[bytes, int]]:
        blob = self._bucket.blob(self._blob_name)
        try:
            body = blob.download_as_bytes()
        except self._missing:
            return None
        return body, blob.generation

    def replace(self, body: bytes, generation: int) -> Optional[int]:
        return self._upload(body, generation)
