"""What one run of a job adds to the worker's Prometheus metrics (`shared.metrics`): queue wait
at its first claim, iterations and iterations per second as progress is written, run time by
outcome at the end, the device memory it peaked at, and how both compare with the capacity
model's prediction."""
from __future__ import annotations

from datetime import datetime

from shared import capacity, metrics
from shared.models import utcnow


class JobMeter:
    def __init__(self, worker: str) -> None:
        self.worker = worker
        self._counted: int | None = None  # iterations already added to the counter

    def claimed(self, created_at: datetime, started_at: datetime, first_start: bool) -> None:
        """Queue wait is observed once per job: at the claim that starts it (not at a resume)."""
        if first_start:
            metrics.JOB_QUEUE_WAIT_SECONDS.observe(max(0.0, (started_at - created_at).total_seconds()))

    def progressed(self, iteration: int, per_second: float, resumed_from: int | None) -> None:
        if self._counted is None:
            self._counted = resumed_from or 0
        metrics.ITERATIONS.labels(self.worker).inc(max(0, iteration - self._counted))
        self._counted = max(self._counted, iteration)
        metrics.ITERATIONS_PER_SECOND.labels(self.worker).set(per_second)

    def ended(self, status: str, started_at: datetime | None) -> None:
        metrics.ITERATIONS_PER_SECOND.labels(self.worker).set(0)
        if started_at is not None:
            metrics.JOB_RUN_SECONDS.labels(status).observe(max(0.0, (utcnow() - started_at).total_seconds()))

    def peak_memory(self, device: str, megabytes: float) -> None:
        metrics.DEVICE_MEMORY.labels(self.worker, device, "peak").set(megabytes * 2**20)

    def against_prediction(self, work: capacity.Workload, device: str, precision: str, seconds: float,
                           peak_memory_mb: float) -> float:
        """Records actual over predicted, for a job that ran alone from the start to its result, by the
        model that predicted it: the fleet's running check of the calibration
        (`bench/calibrate.py`). Returns the model's run time, for the worker's pace."""
        kind = capacity.device_kind(device)
        model, predicted = capacity.model_key(kind, precision), capacity.predict(work, kind, precision)
        metrics.PREDICTION_RATIO.labels(model, "seconds").observe(seconds / predicted.seconds)
        if kind == "cuda":  # a CPU's peak resident set is its process's over its life, not this job's
            metrics.PREDICTION_RATIO.labels(model, "memory").observe(peak_memory_mb / predicted.memory_mb)
        return predicted.seconds
