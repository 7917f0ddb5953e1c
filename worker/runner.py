"""Running one job: claim it, feed the engine its inputs, report progress, keep snapshots and a
checkpoint, honour cancellation, and record the outcome.

A `JobRun` lives for one delivery of one job, or for one job claimed as a companion of another's
delivery to run with it as one batch (`_companions`). Its pieces each read alone: the `Lease` guards
every write, `JobFiles` moves the bytes, `progress_of` shapes what viewers see, and
`worker.shutdown` says when to hand the job back. The engine callback runs after every
iteration; it writes progress (and learns of cancellation) at most every `progress_seconds`, and
only then reads the losses back from the device.
"""
from __future__ import annotations

import functools
import logging
import time
from contextlib import ExitStack

from celery import Celery
from celery.exceptions import Reject
from kombu.exceptions import OperationalError
from PIL import Image
from redis import RedisError
from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import selectinload

from shared import announce, events
from shared.broker import GPU_QUEUE, enqueue
from shared.db import UNAVAILABLE, is_unavailable
from shared.images import ImageError
from shared import capacity
from shared.lifecycle import ErrorCode, add_snapshot, batch_candidates, fail_exhausted
from shared.models import Job, JobStatus, Snapshot
from shared.params import ParamError
from shared.schemas import engine_params, job_path
from shared.services import Services
from shared.storage import StorageError, StorageKeyError
from shared.webhooks import outbox
from worker import shutdown
from worker.engine import (DeviceError, Iterate, Member, OutOfMemory, Result, free_bytes, resolve_device,
                           resolve_precision, stylize, stylize_batch)
from worker.job_files import JobFiles
from worker.job_metrics import JobMeter
from worker.lease import Lease
from worker.presence import describe, node_name, paced
from worker.progress import progress_of

log = logging.getLogger(__name__)
# this process's batch size cap, halved by a batch that ran out of memory (starts at ATELIER_MAX_BATCH)
_batch_limit: dict[str, int] = {}


class JobFailed(Exception):
    """The job cannot succeed; `code` goes to `error.code`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class JobRun:
    def __init__(self, services: Services, celery: Celery, job_id: str, worker: str | None = None) -> None:
        self.services, self.settings, self.celery, self.job_id = services, services.settings, celery, job_id
        self.worker = worker  # this Celery worker's node name
        self.lease = Lease(services, job_id)
        self.handing_back = False  # the worker is shutting down: checkpoint and requeue
        self.resumed_from: int | None = None
        self.params: dict = {}
        self.progress: dict | None = None
        self.files: JobFiles | None = None
        self.earlier_checkpoint: str | None = None  # an earlier claim's, which ours replaces once stored
        self.meter = JobMeter(node_name())
        self.started_at = None
        self.work: capacity.Workload | None = None  # a lone run from the start (`_stylize`): its prediction
        self.timeline: capacity.Timeline | None = None  # the shape of its time, for its ETA
        self.outcome: tuple[JobStatus, str | None] | None = None  # how this delivery ended the job, if it did
        self.concluded = False  # its run's outcome is recorded (a batch member's as soon as it leaves the batch)
        self._last_progress = self._last_checkpoint = time.monotonic()

    # ---- the whole delivery -----------------------------------------------------------------

    def execute(self) -> None:
        try:
            claimed = self.lease.claim()
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
        digests, checkpoint_key, batch_key = self._started()
        runs: list[JobRun] = [self]
        with ExitStack() as alive:
            alive.enter_context(self.lease.kept_alive())
            try:
                images = self._inputs(digests)
                batch = [] if checkpoint_key is not None else self._companions(batch_key, images)
                for run, _ in batch:
                    alive.enter_context(run.lease.kept_alive())
                runs += [run for run, _ in batch]
                outcomes = self._stylize_batch([(self, images), *batch]) if batch else \
                    [self._stylize(images, checkpoint_key)]
            except SQLAlchemyError:  # the database, not the job, failed: the lease expires, the sweep re-runs it
                raise
            except Exception as exc:  # what ended every job of the batch (or the one job) alike
                outcomes = [exc] * len(runs)
        for run, outcome in zip(runs, outcomes):
            if not run.concluded:
                run._conclude(outcome, batch=len(runs))

    def _started(self) -> tuple[list[str], str | None, str | None]:
        """Read the claimed job: its params, input digests, checkpoint and batch key."""
        with self.services.db.session() as session:
            job = session.scalars(select(Job).where(Job.id == self.job_id)).one()
            self.params, attempts, checkpoint_key, batch_key = job.params, job.attempts, job.checkpoint_key, job.batch_key
            digests = [i.sha256 for i in job.inputs]
            self.started_at = job.started_at
            self.meter.claimed(job.created_at, job.started_at, first_start=attempts == 1 and job.progress is None)
        self.files = JobFiles(self.services.storage, self.job_id, self.lease.claim_id, self.params["output_format"])
        self.earlier_checkpoint = checkpoint_key
        log.info("job %s: claimed by %s (attempt %d)", self.job_id, self.lease.owner, attempts)
        self._announce()
        return digests, checkpoint_key, batch_key

    def _not_claimed(self) -> None:
        with self.services.db.session() as session:
            if fail_exhausted(session, self.job_id, self.settings.max_attempts):
                log.warning("job %s: failed after %d attempts", self.job_id, self.settings.max_attempts)
                self.outcome = (JobStatus.FAILED, ErrorCode.ATTEMPTS_EXHAUSTED)
                self._announce()
                return
            status = session.scalar(select(Job.status).where(Job.id == self.job_id))
        log.info("job %s: not claimed (status %s); dropping this delivery", self.job_id, status)

    def _inputs(self, digests: list[str]) -> list[Image.Image]:
        try:
            return self.files.inputs(digests, self.settings.max_pixels)
        except (StorageKeyError, ImageError) as exc:
            raise JobFailed(ErrorCode.INPUT_MISSING, f"an input image is missing or unreadable: {exc}") from None
        except StorageError as exc:
            raise JobFailed(ErrorCode.STORAGE_ERROR, f"the input images could not be read from storage: {exc}") from None

    def _workload(self, images: list[Image.Image]) -> capacity.Workload:
        """What this job asks of a device (`shared.capacity`), on its content and style images."""
        return capacity.workload(engine_params(self.params), images[0].size, [s.size for s in images[1:]])

    @functools.cached_property
    def _on(self) -> tuple[str, str, str] | None:
        """This job's device here, and the capacity model's kind and precision for it, resolved once
        its params are read; None if the device cannot be opened (the run reports it)."""
        try:
            device = resolve_device(self.settings.device)
        except DeviceError:
            return None
        return device, capacity.device_kind(device), resolve_precision(self.params["precision"], device)

    def _timeline(self, images: list[Image.Image]) -> capacity.Timeline | None:
        if self._on is None:
            return None
        _, kind, precision = self._on
        return capacity.timeline(engine_params(self.params), images[0].size, [s.size for s in images[1:]], kind,
                                 precision)

    def _stylize(self, images: list[Image.Image], checkpoint_key: str | None) -> Result:
        self.timeline = self._timeline(images)
        checkpoint = None if checkpoint_key is None else self.files.load_checkpoint(checkpoint_key)
        if checkpoint is not None:
            self.resumed_from = int(checkpoint["iteration"])
            log.info("job %s: resuming from iteration %d", self.job_id, self.resumed_from)
        else:
            self.work = self._workload(images)
        return stylize(images[0], images[1:], engine_params(self.params), device=self.settings.device,
                       callback=self._on_iterate, checkpoint=checkpoint)

    # ---- batches ----------------------------------------------------------------------------

    def _companions(self, batch_key: str | None, images: list[Image.Image]) -> list[tuple[JobRun, list[Image.Image]]]:
        """Queued jobs of this job's shape, claimed to run with it as one batch: as many as the
        device's free memory holds (`shared.capacity`), within ATELIER_MAX_BATCH. Each is claimed
        with the same compare-and-set as a delivery, so none runs twice: its own message, when it
        comes, finds it taken (or ended) and is dropped."""
        limit = min(self.settings.max_batch, _batch_limit.get("limit", self.settings.max_batch))
        if batch_key is None or limit <= 1 or self._on is None:
            return []
        device, kind, precision = self._on
        size = capacity.batch_size(self._workload(images), kind, precision, free_bytes(device), limit)
        if size <= 1:
            return []
        with self.services.db.session() as session:
            candidates = batch_candidates(session, self.job_id, batch_key, size - 1, self.settings.max_attempts)
        companions = []
        for job_id in candidates:
            run = JobRun(self.services, self.celery, job_id, self.worker)
            if not run.lease.claim():  # another worker took it first
                continue
            try:
                companions.append((run, run._inputs(run._started()[0])))
            except JobFailed as exc:
                run._end(JobStatus.FAILED, error_code=exc.code, error_message=str(exc))
        if companions:
            log.info("job %s: running as a batch of %d with %s", self.job_id, len(companions) + 1,
                     ", ".join(run.job_id for run, _ in companions))
        return companions

    def _stylize_batch(self, members: list[tuple[JobRun, list[Image.Image]]]) -> list[Result | Exception]:
        for run, images in members:
            run.timeline = run._timeline(images)
        return stylize_batch([Member(images[0], images[1:], engine_params(run.params), run._on_iterate,
                                     ended=lambda outcome, run=run: run._conclude(outcome, batch=len(members)))
                              for run, images in members], device=self.settings.device)

    def _conclude(self, outcome: Result | Exception, batch: int) -> None:
        """Record how this job's run ended: a result (done, stopped to cancel or to hand back), or
        the error that ended it, alone or with its whole `batch`."""
        self.concluded = True
        if isinstance(outcome, Result):
            if self.lease.lost:
                return
            if outcome.stopped and self.handing_back and not self.lease.cancel_requested:
                self._hand_back(outcome)
            elif outcome.stopped:
                self._end(JobStatus.CANCELED, progress=self.progress)
            else:
                self._succeed(outcome, batch)
        elif isinstance(outcome, DeviceError):  # this worker's device, not the job, is at fault
            self._device_unavailable(outcome)
        elif isinstance(outcome, OutOfMemory) and batch > 1:
            # the batch, not the job, was too big: smaller batches from now on, and the job back to the queue
            _batch_limit["limit"] = max(1, batch // 2)
            log.warning("job %s: out of memory in a batch of %d; this worker now batches at most %d",
                        self.job_id, batch, _batch_limit["limit"])
            self._requeue(None, f"handed back (out of memory in a batch of {batch})")
        else:
            failure = self._failure(outcome)
            self._end(JobStatus.FAILED, error_code=failure.code, error_message=str(failure))

    def _failure(self, error: Exception) -> JobFailed:
        """The job's error code and message for what ended its run."""
        p = self.params
        if isinstance(error, JobFailed):
            return error
        if isinstance(error, ParamError):
            return JobFailed(ErrorCode.INVALID_PARAMS, str(error))
        if isinstance(error, FloatingPointError):
            return JobFailed(ErrorCode.DIVERGED, str(error))
        if isinstance(error, OutOfMemory):  # the engine freed what it held: the worker goes on with its next job
            log.warning("job %s: out of memory on %s: %s", self.job_id, self.settings.device, error)
            return JobFailed(ErrorCode.OUT_OF_MEMORY,
                             f"the worker's device ({self.settings.device}) ran out of memory running this job "
                             f"(size {p['size']} px, {p['iterations']} iterations, {len(p['style_weights'])} style "
                             f"image(s), style_scale {p['style_scale']:g}): {error}. Try a smaller size, fewer style "
                             f"images or a smaller style_scale")
        # a bug or a bad environment: record it rather than retry forever
        log.error("job %s: engine error", self.job_id, exc_info=error)
        return JobFailed(ErrorCode.ENGINE_ERROR, f"{type(error).__name__}: {error}")

    # ---- the engine callback ----------------------------------------------------------------

    def _on_iterate(self, it: Iterate) -> bool:
        if self.lease.lost or self.lease.cancel_requested:
            return True
        if shutdown.STOP.is_set():  # SIGTERM: stop after this iteration, checkpoint, hand the job back
            self.progress = progress_of(it, self.resumed_from, self.timeline)
            self.handing_back = True
            return True
        every = self.params["snapshot_every"]
        if every and it.iteration % every == 0 and it.iteration < it.total:
            self._snapshot(it)
        now = time.monotonic()
        if now - self._last_checkpoint >= self.settings.checkpoint_seconds and it.iteration < it.total:
            self._checkpoint(it.checkpoint())
            self._last_checkpoint = now
        if now - self._last_progress >= self.settings.progress_seconds or it.iteration == it.total:
            self.progress = progress_of(it, self.resumed_from, self.timeline)  # reads the losses: waits for the device
            self.lease.renew(self.progress)
            self.meter.progressed(it.iteration, it.iterations_per_second, self.resumed_from)
            events.publish(self.services.redis, self.job_id, "progress", self.progress)
            self._last_progress = now
        return self.lease.lost or self.lease.cancel_requested

    def _snapshot(self, it: Iterate) -> None:
        try:
            stored = self.files.put_snapshot(it.image(), it.iteration)
        except StorageError as exc:
            log.warning("job %s: snapshot at iteration %d skipped: storage error: %s", self.job_id, it.iteration, exc)
            return

        def record() -> tuple[dict, list[str]] | None:
            snapshot = Snapshot(job_id=self.job_id, iteration=it.iteration, key=stored.key, sha256=stored.sha256,
                                size_bytes=stored.size)
            with self.services.db.session() as session:
                replaced = add_snapshot(session, self.lease.owner, self.settings.lease_seconds, snapshot)
                if replaced is None:
                    return None
                return {"iteration": it.iteration, "url": job_path(self.job_id, "snapshots", it.iteration),
                        "created_at": snapshot.created_at.isoformat()}, replaced
        recorded = self.lease.retrying(record, "snapshot")
        if recorded is None:  # deleted or reclaimed while we stored it: it is nobody's
            self.files.delete(stored.key)
            self.lease.lose("deleted or reclaimed")
            return
        created, replaced = recorded
        for key in replaced:  # an earlier claim's image of this iteration
            self.files.delete(key)
        events.publish(self.services.redis, self.job_id, "snapshot", created)
        outbox.notify(self.services, self.celery, self.job_id, outbox.SNAPSHOT)

    def _checkpoint(self, checkpoint: dict) -> bool:
        """Store the checkpoint and point the job at it; False (logged) if storage failed."""
        try:
            size = self.files.put_checkpoint(checkpoint)
        except StorageError as exc:
            log.warning("job %s: checkpoint at iteration %d not saved: storage error: %s",
                        self.job_id, checkpoint["iteration"], exc)
            return False

        def record() -> bool:
            with self.services.db.session() as session:
                saved = session.execute(update(Job).where(Job.id == self.job_id, Job.lease_owner == self.lease.owner)
                                        .values(checkpoint_key=self.files.checkpoint_key, checkpoint_bytes=size)
                                        .execution_options(synchronize_session=False)).rowcount
                session.commit()
                return bool(saved)
        if not self.lease.retrying(record, "checkpoint"):
            # deleted (maybe after the API removed the job's files) or reclaimed while we wrote it: leave none behind
            self.files.delete(self.files.checkpoint_key)
            self.lease.lose("deleted or reclaimed")
            return False
        self._drop_earlier_checkpoint()
        return True

    def _drop_earlier_checkpoint(self) -> None:
        """The checkpoint this claim resumed from, once the job no longer points at it."""
        if self.earlier_checkpoint is not None:
            self.files.delete(self.earlier_checkpoint)
            self.earlier_checkpoint = None

    # ---- outcomes ---------------------------------------------------------------------------

    def _succeed(self, result: Result, batch: int) -> None:
        try:
            stored = self.files.put_result(result.image)
        except StorageError as exc:
            log.error("job %s: the result could not be stored: %s", self.job_id, exc)
            self._end(JobStatus.FAILED, progress=self.progress, error_code=ErrorCode.STORAGE_ERROR,
                      error_message=f"the result could not be written to storage: {exc}")
            return
        if self.work is not None:  # a lone run from the start, set against the model before anyone sees it end
            paced(self.services.redis, result.seconds, self.meter.against_prediction(
                self.work, result.device, result.params.precision, result.seconds, result.peak_memory_mb))
        progress = (self.progress or {}) | {"iteration": result.iterations, "total": result.total, "percent": 100.0,
                                            "eta_seconds": 0.0, "losses": result.losses}
        ended = self._end(JobStatus.SUCCEEDED, progress=progress, result_key=stored.key, result_sha256=stored.sha256,
                          result_bytes=stored.size, result_width=result.image.width,
                          result_height=result.image.height, result_quality=result.quality,
                          result_run=self._ran(result, batch), checkpoint_key=None, checkpoint_bytes=None)
        if ended:
            self.files.delete(self.files.checkpoint_key)
            self._drop_earlier_checkpoint()
        else:  # our own key: the claim that holds the job now stored its result elsewhere
            self.files.delete(stored.key)
        self.meter.peak_memory(result.device, result.peak_memory_mb)
        log.info("job %s: succeeded in %.1fs on %s", self.job_id, result.seconds, result.device)

    @staticmethod
    def _ran(result: Result, batch: int) -> dict:
        """How the run went, to set against the job's prediction: where, in what precision (what
        `auto` chose), how long, in how much memory (a CPU's is the worker process's peak
        resident set), and with how many jobs sharing those."""
        return {"worker": node_name(), "device": result.device, "device_name": describe(result.device)["name"],
                "precision": result.params.precision, "seconds": round(result.seconds, 2),
                "peak_memory_mb": round(result.peak_memory_mb), "batch_size": batch}

    def _end(self, status: JobStatus, **values: object) -> bool:
        ended = self.lease.finish(status, **values)
        self.meter.ended(status.value, self.started_at if ended else None)
        if ended:
            self.outcome = (status, values.get("error_code"))
            self._announce()
        else:
            log.warning("job %s: lost the lease before recording %s", self.job_id, status.value)
        return ended

    def _announce(self) -> None:
        def read() -> Job | None:
            with self.services.db.session() as session:
                return session.get(Job, self.job_id, options=[selectinload(Job.snapshots)])
        job = self.lease.retrying(read, "status event")
        if job is not None:
            announce.status_changed(self.services, self.celery, job)

    def _hand_back(self, result: Result) -> None:
        """The worker is stopping (SIGTERM): keep where we are, requeue the job, let another worker resume it."""
        saved = not self.lease.lost and self._checkpoint(result.checkpoint)
        self._requeue(self.files.checkpoint_key if saved else None,
                      f"handed back at iteration {result.iterations} (worker shutting down)")

    def _device_unavailable(self, error: DeviceError) -> None:
        """This worker's device is missing or unusable: it stops taking jobs (it stays online, its
        device shown as unavailable on the System page, until restarted) and the job goes back to
        the queue for another worker, its claim refunded as on a hand-back. The consumer is
        cancelled first, so the job cannot come straight back here."""
        log.error("job %s: this worker's device is unavailable (%s); it takes no more jobs until restarted",
                  self.job_id, error)
        if self.worker is not None:
            try:
                self.celery.control.cancel_consumer(GPU_QUEUE, destination=[self.worker], reply=True, timeout=5)
            except (OperationalError, RedisError, OSError) as exc:  # requeue all the same; the sweep has the rest
                log.error("job %s: could not stop consuming %s: %s", self.job_id, GPU_QUEUE, exc)
        self._requeue(None, f"handed to another worker (device unavailable: {error})")

    def _requeue(self, checkpoint_key: str | None, why: str) -> None:
        """Put the job we hold back to `queued` and send it to the broker again."""
        if not self.lease.release(self.progress, checkpoint_key):
            log.warning("job %s: not handed back: no longer ours, or asked to cancel", self.job_id)
            if self.lease.cancel_requested or not self.lease.lost:
                self._end(JobStatus.CANCELED, progress=self.progress)
            return
        log.warning("job %s: %s; re-queued", self.job_id, why)
        self._announce()
        enqueue(self.celery, self.services.db, self.job_id)
