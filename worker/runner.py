"""Running one job: claim it, feed the engine its inputs, report progress, keep snapshots and a
checkpoint, honour cancellation, and record the outcome, every write guarded by our lease.

A `JobRun` lives for one delivery of one job. The engine callback is called after every
iteration; it writes progress (and learns of cancellation) at most every `progress_seconds`,
while a `Heartbeat` thread keeps the lease alive through long gaps between callbacks
(network loading, coarse-to-fine stage setup, the final quality report).
"""
from __future__ import annotations

import io
import logging
import os
import socket
import threading
import time
import uuid

import torch
from celery import current_app
from celery.exceptions import Reject
from PIL import Image
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from shared import events, jobs
from shared.db import UNAVAILABLE, is_unavailable, with_retries
from shared.images import ImageError, open_image
from shared.jobs import ErrorCode
from shared.models import Job, JobStatus, Snapshot
from shared.schemas import engine_params, job_out, job_path
from shared.services import Services
from shared.storage import StorageKeyError, input_key, job_prefix, sha256
from shared.webhooks import outbox
from worker import shutdown
from worker.broker import enqueue
from worker.engine import Iterate, ParamError, Result, stylize

log = logging.getLogger(__name__)

PIL_FORMATS = {"png": ("PNG", {}), "jpeg": ("JPEG", {"quality": 95}), "webp": ("WEBP", {"quality": 95})}


class JobFailed(Exception):
    """The job cannot succeed; `code` goes to `error.code`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def encode_image(image: Image.Image, output_format: str) -> bytes:
    pil_format, options = PIL_FORMATS[output_format]
    buffer = io.BytesIO()
    image.save(buffer, pil_format, **options)
    return buffer.getvalue()


class Heartbeat(threading.Thread):
    """Renews the lease every lease/3 seconds; notices cancellation and loss of the lease."""

    def __init__(self, run: JobRun) -> None:
        super().__init__(name=f"heartbeat-{run.job_id}", daemon=True)
        self.run_ = run
        self.stopped = threading.Event()

    def run(self) -> None:
        interval = self.run_.settings.lease_seconds / 3
        while not self.stopped.wait(interval):
            try:
                self.run_.renew()
            except SQLAlchemyError as exc:  # out of retries: the job's own next write fails the same way
                log.error("job %s: heartbeat could not renew the lease: %s", self.run_.job_id, exc)

    def stop(self) -> None:
        self.stopped.set()
        self.join()


class JobRun:
    def __init__(self, services: Services, job_id: str) -> None:
        self.services, self.settings, self.job_id = services, services.settings, job_id
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.cancel_requested = False
        self.lost = False          # the lease is no longer ours: write nothing more
        self.handing_back = False  # the worker is shutting down: checkpoint and requeue
        self.resumed_from: int | None = None
        self.params: dict = {}
        self.progress: dict | None = None
        self._last_progress = self._last_checkpoint = time.monotonic()
        self._lock = threading.Lock()  # the callback and the heartbeat both renew

    # ---- the whole delivery -----------------------------------------------------------------

    def execute(self) -> None:
        db = self.services.db
        def claim() -> bool:
            with db.session() as session:
                return jobs.claim(session, self.job_id, self.owner, self.settings.lease_seconds, self.settings.max_attempts)
        try:
            claimed = self._retrying(claim, "claim")
        except UNAVAILABLE as error:
            if not is_unavailable(error):
                raise
            # nothing started: put the message back for a later delivery rather than ack it and
            # leave the job queued until the sweep deems its message lost
            log.warning("job %s: database unavailable at claim; message requeued", self.job_id)
            raise Reject("database unavailable at claim", requeue=True) from None
        if not claimed:
            self._not_claimed()
            return
        with db.session() as session:
            job = session.scalars(select(Job).where(Job.id == self.job_id)).one()
            self.params, attempts, checkpoint_key = job.params, job.attempts, job.checkpoint_key
            digests = [i.sha256 for i in job.inputs]
        log.info("job %s: claimed by %s (attempt %d)", self.job_id, self.owner, attempts)
        self._publish_status()
        heartbeat = Heartbeat(self)
        heartbeat.start()
        try:
            result = self._stylize(digests, checkpoint_key)
        except JobFailed as exc:
            heartbeat.stop()
            self._end(JobStatus.FAILED, error_code=exc.code, error_message=str(exc))
            return
        except SQLAlchemyError:
            # the database, not the job, failed: leave the lease to expire and the sweep to re-run it
            heartbeat.stop()
            raise
        except Exception as exc:  # a bug or a bad environment: record it rather than retry forever
            heartbeat.stop()
            log.exception("job %s: engine error", self.job_id)
            self._end(JobStatus.FAILED, error_code=ErrorCode.ENGINE_ERROR, error_message=f"{type(exc).__name__}: {exc}")
            return
        heartbeat.stop()
        if self.lost:
            return
        if result.stopped and self.handing_back and not self.cancel_requested:
            self._hand_back(result)
            return
        if result.stopped:
            self._end(JobStatus.CANCELED, progress=self.progress)
            return
        self._succeed(result)

    def _not_claimed(self) -> None:
        with self.services.db.session() as session:
            if jobs.fail_exhausted(session, self.job_id, self.settings.max_attempts):
                log.warning("job %s: failed after %d attempts", self.job_id, self.settings.max_attempts)
                self._publish_status()
                return
            status = session.scalar(select(Job.status).where(Job.id == self.job_id))
        log.info("job %s: not claimed (status %s); dropping this delivery", self.job_id, status)

    def _stylize(self, digests: list[str], checkpoint_key: str | None) -> Result:
        storage = self.services.storage
        try:
            images = [open_image(storage.get(input_key(d)), max_pixels=self.settings.max_pixels) for d in digests]
        except (StorageKeyError, ImageError) as exc:
            raise JobFailed(ErrorCode.INPUT_MISSING, f"an input image is missing or unreadable: {exc}") from None
        try:
            engine = engine_params(self.params)
        except ParamError as exc:
            raise JobFailed(ErrorCode.INVALID_PARAMS, str(exc)) from None
        checkpoint = self._load_checkpoint(checkpoint_key)
        try:
            return stylize(images[0], images[1:], engine, device=self.settings.device,
                           callback=self._on_iterate, checkpoint=checkpoint)
        except ParamError as exc:
            raise JobFailed(ErrorCode.INVALID_PARAMS, str(exc)) from None
        except FloatingPointError as exc:
            raise JobFailed(ErrorCode.DIVERGED, str(exc)) from None

    # ---- the engine callback ----------------------------------------------------------------

    def _on_iterate(self, it: Iterate) -> bool:
        if self.lost or self.cancel_requested:
            return True
        if shutdown.STOP.is_set():  # SIGTERM: stop after this iteration, checkpoint, hand the job back
            self.progress = self._progress(it)
            self.handing_back = True
            return True
        self.progress = self._progress(it)
        every = self.params["snapshot_every"]
        if every and it.iteration % every == 0 and it.iteration < it.total:
            self._snapshot(it)
        now = time.monotonic()
        if now - self._last_checkpoint >= self.settings.checkpoint_seconds and it.iteration < it.total:
            self._save_checkpoint(it.checkpoint())
            self._last_checkpoint = now
        if now - self._last_progress >= self.settings.progress_seconds or it.iteration == it.total:
            self.renew(self.progress)
            events.publish(self.services.redis, self.job_id, "progress", self.progress)
            self._last_progress = now
        return self.lost or self.cancel_requested

    def renew(self, progress: dict | None = None) -> None:
        """Extend the lease (writing progress if given); learn whether to stop."""
        def write():
            with self.services.db.session() as session:
                return jobs.renew(session, self.job_id, self.owner, self.settings.lease_seconds, progress)
        with self._lock:
            answer = self._retrying(write, "progress" if progress is not None else "lease renewal")
        if answer is False:
            self._lose("deleted or reclaimed")
        elif answer is not None:
            self.cancel_requested = True

    def _lose(self, why: str) -> None:
        """The job is no longer ours to write: stop at the next callback and record nothing."""
        if not self.lost:
            log.warning("job %s: lease lost (%s); stopping", self.job_id, why)
        self.lost = True

    def _progress(self, it: Iterate) -> dict:
        ips = it.iterations_per_second
        return {"iteration": it.iteration, "total": it.total, "scale": it.scale, "scales": it.scales,
                "percent": round(100 * it.iteration / it.total, 2), "losses": it.losses,
                "iterations_per_second": round(ips, 3),
                "eta_seconds": round((it.total - it.iteration) / ips, 1) if ips > 0 else None,
                "resumed_from": self.resumed_from}

    def _snapshot(self, it: Iterate) -> None:
        data = encode_image(it.image(), self.params["output_format"])
        key = f"{job_prefix(self.job_id)}snapshots/{it.iteration:06d}.{self.params['output_format']}"
        try:
            self.services.storage.put(key, data)  # atomic: a temp file renamed, never half a file under `key`
        except OSError as exc:
            log.warning("job %s: snapshot at iteration %d skipped: storage error: %s", self.job_id, it.iteration, exc)
            return

        def record() -> dict:
            snapshot = Snapshot(job_id=self.job_id, iteration=it.iteration, key=key, sha256=sha256(data))
            with self.services.db.session() as session:
                # a resumed attempt may redo an iteration: the newer image replaces the older
                session.execute(delete(Snapshot).where(Snapshot.job_id == self.job_id, Snapshot.iteration == it.iteration))
                session.add(snapshot)
                session.commit()
                return {"iteration": it.iteration, "url": job_path(self.job_id, "snapshots", it.iteration),
                        "created_at": snapshot.created_at.isoformat()}
        try:
            created = self._retrying(record, "snapshot")
        except IntegrityError:  # the job row is gone: deleted while running
            self.services.storage.delete(key)
            self._lose("deleted")
            return
        events.publish(self.services.redis, self.job_id, "snapshot", created)
        outbox.notify(self.services, current_app, self.job_id, outbox.SNAPSHOT)

    # ---- checkpoints ------------------------------------------------------------------------

    def _checkpoint_key(self) -> str:
        return f"{job_prefix(self.job_id)}checkpoint.pt"

    def _save_checkpoint(self, checkpoint: dict) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        try:
            self.services.storage.put(self._checkpoint_key(), buffer.getvalue())  # atomic: temp file + rename
        except OSError as exc:
            log.warning("job %s: checkpoint at iteration %d not saved: storage error: %s",
                        self.job_id, checkpoint["iteration"], exc)
            return

        def record() -> bool:
            with self.services.db.session() as session:
                saved = session.execute(update(Job).where(Job.id == self.job_id, Job.lease_owner == self.owner)
                                        .values(checkpoint_key=self._checkpoint_key())
                                        .execution_options(synchronize_session=False)).rowcount
                session.commit()
                return not saved and session.get(Job, self.job_id) is None
        gone = self._retrying(record, "checkpoint")
        if gone:  # deleted while we wrote it, maybe after the API removed the job's files: leave none behind
            self.services.storage.delete(self._checkpoint_key())

    def _load_checkpoint(self, key: str | None) -> dict | None:
        if key is None:
            return None
        try:
            checkpoint = torch.load(io.BytesIO(self.services.storage.get(key)), weights_only=True)
        except (StorageKeyError, RuntimeError, EOFError, OSError) as exc:
            log.warning("job %s: checkpoint unusable (%s); starting over", self.job_id, exc)
            return None
        self.resumed_from = int(checkpoint["iteration"])
        log.info("job %s: resuming from iteration %d", self.job_id, self.resumed_from)
        return checkpoint

    # ---- outcomes ---------------------------------------------------------------------------

    def _succeed(self, result: Result) -> None:
        output_format = self.params["output_format"]
        data = encode_image(result.image, output_format)
        key = f"{job_prefix(self.job_id)}result.{output_format}"
        try:
            self.services.storage.put(key, data)
        except OSError as exc:
            log.error("job %s: the result could not be stored: %s", self.job_id, exc)
            self._end(JobStatus.FAILED, progress=self.progress, error_code=ErrorCode.STORAGE_ERROR,
                      error_message=f"the result could not be written to storage: {exc}")
            return
        progress = (self.progress or {}) | {"iteration": result.iterations, "total": result.total, "percent": 100.0,
                                            "eta_seconds": 0.0, "losses": result.losses}
        ended = self._end(JobStatus.SUCCEEDED, progress=progress, result_key=key, result_sha256=sha256(data),
                          result_width=result.image.width, result_height=result.image.height,
                          result_quality=result.quality, checkpoint_key=None)
        if ended:
            self.services.storage.delete(self._checkpoint_key())
        else:
            self.services.storage.delete(key)
        log.info("job %s: succeeded in %.1fs on %s", self.job_id, result.seconds, result.device)

    def _end(self, status: JobStatus, **values: object) -> bool:
        def write() -> bool:
            with self.services.db.session() as session:
                return jobs.finish(session, self.job_id, self.owner, status, **values)
        ended = self._retrying(write, f"recording {status.value}")
        if ended:
            self._publish_status()
        else:
            log.warning("job %s: lost the lease before recording %s", self.job_id, status.value)
        return ended

    def _publish_status(self) -> None:
        def read() -> dict | None:
            with self.services.db.session() as session:
                job = session.get(Job, self.job_id)
                return None if job is None else job_out(job).model_dump(mode="json")
        data = self._retrying(read, "status event")
        if data is None:
            return
        events.publish(self.services.redis, self.job_id, "status", data)
        try:
            outbox.notify(self.services, current_app, self.job_id)
        except SQLAlchemyError as exc:  # the webhook sweep records a missed terminal event later
            log.warning("job %s: webhook event not recorded now (%s); the sweep will", self.job_id, exc)

    def _retrying(self, operation, what: str):
        return with_retries(operation, seconds=self.settings.database_retry_seconds, what=f"job {self.job_id}: {what}")

    # ---- graceful shutdown ------------------------------------------------------------------

    def _hand_back(self, result: Result) -> None:
        """The worker is stopping (SIGTERM): keep where we are, requeue the job, let another worker resume it."""
        checkpoint_key = None
        if not self.lost:
            buffer = io.BytesIO()
            torch.save(result.checkpoint, buffer)
            try:
                self.services.storage.put(self._checkpoint_key(), buffer.getvalue())
                checkpoint_key = self._checkpoint_key()
            except OSError as exc:
                log.warning("job %s: checkpoint at hand-back not saved: storage error: %s", self.job_id, exc)

        def write() -> bool:
            with self.services.db.session() as session:
                if self.progress is not None:
                    jobs.renew(session, self.job_id, self.owner, self.settings.lease_seconds, self.progress)
                return jobs.release(session, self.job_id, self.owner, checkpoint_key)
        if not self._retrying(write, "hand-back"):
            log.warning("job %s: not handed back: no longer ours, or asked to cancel", self.job_id)
            if self.cancel_requested or not self.lost:
                self._end(JobStatus.CANCELED, progress=self.progress)
            return
        log.warning("job %s: handed back at iteration %d (worker shutting down); re-queued", self.job_id, result.iterations)
        self._publish_status()
        enqueue(current_app, self.services.db, self.job_id)
