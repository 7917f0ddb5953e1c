"""A running job's bytes in storage: its input images in, and its snapshots, checkpoint and result
out, encoded as the job asked. Keys come from `shared.storage`; every write is atomic there, so
nothing half-written is ever under a key. Database rows for these files are the runner's business.
"""
from __future__ import annotations

import io
import logging
from typing import NamedTuple

import torch
from PIL import Image

from shared.images import open_image
from shared.storage import Storage, StorageError, StorageKeyError, checkpoint_key, input_key, result_key, sha256, snapshot_key

log = logging.getLogger(__name__)

PIL_FORMATS = {"png": ("PNG", {}), "jpeg": ("JPEG", {"quality": 95}), "webp": ("WEBP", {"quality": 95})}


def encode_image(image: Image.Image, output_format: str) -> bytes:
    pil_format, options = PIL_FORMATS[output_format]
    buffer = io.BytesIO()
    image.save(buffer, pil_format, **options)
    return buffer.getvalue()


class Stored(NamedTuple):
    key: str
    sha256: str
    size: int   # bytes


class JobFiles:
    """One claim's files of a job: every key it writes is its own (`claim`), so a claim that lost
    its lease and the claim after it never overwrite or delete each other's files."""

    def __init__(self, storage: Storage, job_id: str, claim: str, output_format: str) -> None:
        self.storage, self.job_id, self.claim, self.output_format = storage, job_id, claim, output_format
        self.checkpoint_key = checkpoint_key(job_id, claim)

    def inputs(self, digests: list[str], max_pixels: int) -> list[Image.Image]:
        """The job's images, content first; raises StorageKeyError, StorageError or ImageError."""
        return [open_image(self.storage.get(input_key(d)), max_pixels=max_pixels) for d in digests]

    def put_snapshot(self, image: Image.Image, iteration: int) -> Stored:
        """Store a snapshot. Raises StorageError on a storage failure."""
        return self._put(snapshot_key(self.job_id, iteration, self.claim, self.output_format), image)

    def put_result(self, image: Image.Image) -> Stored:
        return self._put(result_key(self.job_id, self.claim, self.output_format), image)

    def _put(self, key: str, image: Image.Image) -> Stored:
        data = encode_image(image, self.output_format)
        self.storage.put(key, data)
        return Stored(key, sha256(data), len(data))

    def put_checkpoint(self, checkpoint: dict) -> int:
        """Store the checkpoint; returns its size in bytes."""
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        self.storage.put(self.checkpoint_key, buffer.getvalue())
        return buffer.getbuffer().nbytes

    def load_checkpoint(self, key: str) -> dict | None:
        """The checkpoint under `key`, or None (logged) if it is missing or unreadable."""
        try:
            return torch.load(io.BytesIO(self.storage.get(key)), weights_only=True)
        except (StorageKeyError, StorageError, RuntimeError, EOFError, OSError) as exc:
            log.warning("job %s: checkpoint unusable (%s); starting over", self.job_id, exc)
            return None

    def delete(self, key: str) -> None:
        """Remove what we no longer need (a used-up checkpoint, an orphaned image); best effort."""
        try:
            self.storage.delete(key)
        except StorageError as exc:
            log.warning("job %s: %s left behind: storage error: %s", self.job_id, key, exc)
