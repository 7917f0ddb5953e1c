"""Prometheus metrics (prometheus_client), one set for every process of a machine.

Processes that count (gunicorn's API workers, the GPU workers' pool processes, the maintenance
worker) write their values into `PROMETHEUS_MULTIPROC_DIR` when it is set (prometheus_client's
multiprocess mode: one memory-mapped file per process); a scrape reads them all. `atelier run`
points every child at `var/metrics`, so the API's `/metrics` shows the workers' values too;
`atelier worker` gives its workers a directory of their own and serves it on
`ATELIER_WORKER_METRICS_PORT` (`serve`), one scrape target per GPU machine. Without the
variable each process keeps its own values (tests, a bare `celery worker`).

What is asked of the database and Redis at scrape time (jobs by status, queue depth) is not
kept here: the API's `/metrics` collects it fresh (`api.metrics`).
"""
from __future__ import annotations

import hmac
import logging
import os
import shutil
import threading
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Iterable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4 as CONTENT_TYPE  # what every Prometheus parses

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# the API (api.metrics)
REQUESTS = Counter("atelier_http_requests_total", "HTTP requests answered, by route template, method and status",
                   ["route", "method", "status"])
REQUEST_SECONDS = Histogram("atelier_http_request_duration_seconds", "Time to answer an HTTP request (to the "
                            "first byte of a streamed one)", ["route", "method"])
# the GPU workers (worker.job_metrics)
JOB_RUN_SECONDS = Histogram("atelier_job_run_seconds", "A job's time from its first claim to its end, by outcome",
                            ["status"], buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400))
JOB_QUEUE_WAIT_SECONDS = Histogram("atelier_job_queue_wait_seconds", "A job's time from submission to its first claim",
                                   buckets=(0.1, 0.5, 1, 2.5, 5, 15, 30, 60, 300, 900, 1800, 3600, 7200))
ITERATIONS = Counter("atelier_engine_iterations_total", "Optimiser iterations run, per worker", ["worker"])
ITERATIONS_PER_SECOND = Gauge("atelier_worker_iterations_per_second", "The running job's optimiser iterations per "
                              "second (0 while idle), per worker", ["worker"], multiprocess_mode="livemax")
PREDICTION_RATIO = Histogram("atelier_job_prediction_ratio", "A succeeded job's run time (measure=seconds) and, on "
                             "a GPU, peak memory (measure=memory) over what the capacity model predicts for the device "
                             "it ran on, by the model's calibration entry (cuda-bf16): how far the calibration is off "
                             "on this fleet. Only jobs that ran alone from the start: a batch shares its time and "
                             "memory, a resumed run did part of the work, and a CPU's peak is its process's whole life's",
                             ["model", "measure"], buckets=(0.25, 0.5, 0.67, 0.8, 0.9, 1, 1.1, 1.25, 1.5, 2, 4))
DEVICE_MEMORY = Gauge("atelier_worker_device_memory_bytes", "Per worker: its device's memory (`total`: the GPU's, or the machine's on a CPU) and "
                      "the last job's peak use (`peak`: CUDA allocations, or the process's peak RSS on a CPU)",
                      ["worker", "device", "kind"], multiprocess_mode="livemax")
# the maintenance worker (shared.webhooks.sender)
WEBHOOK_DELIVERIES = Counter("atelier_webhook_deliveries_total", "Webhook delivery attempts by outcome: delivered, "
                             "retrying (failed, another attempt is scheduled) or failed (given up)", ["outcome"])


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def fresh_dir(path: Path) -> Path:
    """An empty multiprocess directory: values of processes from an earlier run must not count."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path.resolve()


def process_exited(pid: int) -> None:
    """Drop a dead process's live gauges (its counters and histograms keep counting in the totals)."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(pid)


def exposition(extra: Iterable[object] = ()) -> bytes:
    """The text format of every process's values (or this process's), plus `extra` collectors."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        base = generate_latest(registry)
    else:
        base = generate_latest(REGISTRY)
    scrape = CollectorRegistry()
    for collector in extra:
        scrape.register(collector)
    return base + generate_latest(scrape)


def authorized(header: str | None, token: str | None) -> bool:
    """`Authorization: Bearer <token>`, compared in constant time; never true without a token."""
    if not token or not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header.removeprefix("Bearer ").encode(), token.encode())


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *_args) -> None:  # Prometheus scrapes every few seconds: no access log
        pass


def serve(port: int, token: str | None, host: str = "0.0.0.0") -> WSGIServer:
    """Serve `exposition()` at `/metrics` on `port` in a thread (a GPU machine's scrape target).
    With a token, only `Authorization: Bearer <token>` gets the metrics."""
    def app(environ, start_response):
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"metrics are at /metrics\n"]
        if token and not authorized(environ.get("HTTP_AUTHORIZATION"), token):
            start_response("401 Unauthorized", [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")])
            return [b"send Authorization: Bearer <ATELIER_METRICS_TOKEN>\n"]
        start_response("200 OK", [("Content-Type", CONTENT_TYPE)])
        return [exposition()]

    server = make_server(host, port, app, server_class=_Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics%s", host, port, " (bearer token required)" if token else "")
    return server
