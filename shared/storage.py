"""Where images and checkpoints live. Local disk now, behind a protocol an S3 backend can implement.

Keys are relative, slash-separated paths, and this module owns their layout. Uploaded inputs
are content-addressed (`inputs/ab/abcdef...`) so the same style uploaded twice is stored once;
a job's outputs live under `jobs/<job id>/` (`result.png`, `snapshots/000050.png`,
`checkpoint.pt`) so deleting a job is deleting one prefix.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Protocol


class Storage(Protocol):
    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> None: ...


class StorageKeyError(KeyError):
    """No object under this key."""


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


def result_key(job_id: str, output_format: str) -> str:
    return f"{job_prefix(job_id)}result.{output_format}"


def snapshot_key(job_id: str, iteration: int, output_format: str) -> str:
    return f"{job_prefix(job_id)}snapshots/{iteration:06d}.{output_format}"


def checkpoint_key(job_id: str) -> str:
    return f"{job_prefix(job_id)}checkpoint.pt"


class LocalStorage:
    """Files under one directory; writes are atomic (temp file + rename)."""

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
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise StorageKeyError(key) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix.rstrip("/")), ignore_errors=True)
