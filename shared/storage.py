"""Where images and checkpoints live: a local directory (`LocalStorage`, the default) or an
S3-compatible bucket (`shared.storage_s3.S3Storage`), chosen by `open_storage(settings)`.

Keys are relative, slash-separated paths, and this module owns their layout. Uploaded inputs
are content-addressed (`inputs/ab/abcdef...`) so the same style uploaded twice is stored once;
a job's outputs live under `jobs/<job id>/` (`result-<claim>.png`, `snapshots/000050-<claim>.png`,
`checkpoint-<claim>.pt`, each named for the claim that made it) so deleting a job is deleting
one prefix.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from shared.config import Settings


class Storage(Protocol):
    """Every backend: a write is all or nothing (never half an object under a key), a failure of
    the store raises `StorageError`, a missing key `StorageKeyError`."""

    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def presigned_url(self, key: str, seconds: int, content_type: str, cache_control: str) -> str | None:
        """A URL a client can GET the object from without us for `seconds`, or None (not supported)."""
        ...


class StorageKeyError(KeyError):
    """No object under this key."""


class StorageError(Exception):
    """The store failed (unreachable, full, refused): the operation did not happen. Both backends
    raise it, so callers decide what a storage failure means without knowing the backend."""


def open_storage(settings: "Settings") -> Storage:
    """`ATELIER_STORAGE_URL` (`s3://bucket/prefix`, `file:///path` or a plain path), else
    `ATELIER_STORAGE_DIR`."""
    url = settings.storage_url
    if not url:
        return LocalStorage(settings.storage_dir)
    parts = urlsplit(url)
    if parts.scheme == "s3":
        from shared.storage_s3 import S3Storage

        return S3Storage(parts.netloc, parts.path.strip("/"))
    if parts.scheme == "file":
        return LocalStorage(parts.netloc + parts.path)
    if parts.scheme == "":
        return LocalStorage(url)
    raise ValueError(f"ATELIER_STORAGE_URL={url!r}: expected s3://bucket/prefix, file:///path or a path")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def input_key(digest: str) -> str:
    return f"inputs/{digest[:2]}/{digest}"


def put_input(storage: Storage, data: bytes) -> str:
    """Store an uploaded image once per distinct content; returns its sha256."""
    digest = sha256(data)
    if not storage.exists(input_key(digest)):
        storage.put(input_key(digest), data)
    return digest


def job_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/"


# A run's outputs carry its claim's id: a worker whose lease ran out may still be writing while the
# job's next claim runs, and it must neither overwrite nor delete what that claim stored.

def result_key(job_id: str, claim: str, output_format: str) -> str:
    return f"{job_prefix(job_id)}result-{claim}.{output_format}"


def snapshot_key(job_id: str, iteration: int, claim: str, output_format: str) -> str:
    return f"{job_prefix(job_id)}snapshots/{iteration:06d}-{claim}.{output_format}"


def checkpoint_key(job_id: str, claim: str) -> str:
    return f"{job_prefix(job_id)}checkpoint-{claim}.pt"


class LocalStorage:
    """Files under one directory; writes are atomic (temp file + rename). OSErrors of the file
    system are raised as `StorageError`."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        parts = PurePosixPath(key).parts
        if not parts or key.startswith("/") or any(p in ("..", ".") for p in parts):
            raise ValueError(f"invalid storage key {key!r}")
        return self.root.joinpath(*parts)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        except OSError as exc:
            raise StorageError(f"cannot write {key}: {exc}") from exc
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException as exc:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise StorageError(f"cannot write {key}: {exc}") from exc
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            raise StorageKeyError(key) from None
        except OSError as exc:
            raise StorageError(f"cannot read {key}: {exc}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except NotADirectoryError:
            pass
        except OSError as exc:
            raise StorageError(f"cannot delete {key}: {exc}") from exc

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix.rstrip("/")), ignore_errors=True)

    def presigned_url(self, key: str, seconds: int, content_type: str, cache_control: str) -> None:
        return None  # files on our own disk: the API streams them
