"""The streams mode of `bench/load.py`: how many open event streams the API holds, and what each
one costs it.

It submits one job (with no worker it stays queued, so its streams stay open), opens `--streams`
`GET /v1/jobs/{id}/events` streams to it in batches, each read until its first event, then for
`--duration` seconds publishes a `progress` event on the job's channel every second (what a
running job's worker does, without the engine's CPU on this machine) while it reads every stream
and probes `/healthz` and `GET /v1/jobs/{id}` ten times a second from another connection.

Reports the streams held open (and any refused), the API processes' resident memory before and
after opening them (per stream), their CPU during the window (in all and per stream), the
events each stream received out of those published, the probes' latency, and the load
generator's own CPU: every stream is one socket of this single-threaded selector loop.
"""
from __future__ import annotations

import http.client
import json
import selectors
import socket
import statistics
import threading
import time
from pathlib import Path

PROGRESS = {"iteration": 10, "total": 200, "scale": 0, "scales": 3, "percent": 5.0,
            "losses": {"content": 1.25, "style": 3.5, "tv": 0.01, "total": 4.76},
            "iterations_per_second": 12.5, "eta_seconds": 15.2, "resumed_from": None}
MARKER = b"event: progress"
BATCH = 100


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Stream:
    def __init__(self, port: int, path: str, token: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
                          "Accept: text/event-stream\r\n\r\n".encode())
        self.seen, self.tail, self.progress = b"", b"", 0

    def first_event(self) -> None:
        while b"event: status" not in self.seen:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed before its first event: {self.seen[:200]!r}")
            self.seen += chunk
        if not self.seen.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(self.seen[:200].decode(errors="replace"))
        self.sock.setblocking(False)

    def read(self) -> bool:
        """Count the progress events in what arrived; False once the server closed the stream."""
        try:
            chunk = self.sock.recv(65536)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        data = self.tail + chunk
        self.progress += data.count(MARKER)
        self.tail = data[-(len(MARKER) - 1):]
        return True


def probe(port: int, path: str, auth: dict, until: float, latencies: dict[str, list[float]]) -> None:
    while time.monotonic() < until:
        for route, headers in (("/healthz", {}), (path, auth)):
            began = time.perf_counter()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                connection.request("GET", route, headers=headers)
                status = connection.getresponse().status
                latencies["healthz" if route == "/healthz" else "poll"].append(
                    time.perf_counter() - began if status == 200 else float("inf"))
            except OSError:
                latencies["healthz" if route == "/healthz" else "poll"].append(float("inf"))
            finally:
                connection.close()
        time.sleep(0.1)


def run(stack, args, summary, cpu_shares, multipart) -> dict:
    """`stack`: bench/load.py's Stack (no worker); the other three are its helpers."""
    from shared import events
    from shared.services import Services

    token = stack.keys(1)[0]
    auth = {"Authorization": f"Bearer {token}"}
    body, content_type = multipart(1)
    connection = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=30)
    connection.request("POST", "/v1/jobs", body=body, headers=auth | {"Content-Type": content_type})
    job_id = json.loads(connection.getresponse().read())["id"]
    connection.close()
    path = f"/v1/jobs/{job_id}"
    api = stack.api_pids()
    rss_before = sum(map(rss_bytes, api))

    opened, refused, began_opening = [], [], time.monotonic()
    for start in range(0, args.streams, BATCH):
        batch = []
        for _ in range(min(BATCH, args.streams - start)):
            try:
                batch.append(Stream(stack.port, f"{path}/events", token))
            except OSError as exc:
                refused.append(repr(exc))
        for stream in batch:
            try:
                stream.first_event()
                opened.append(stream)
            except (OSError, ConnectionError) as exc:
                refused.append(repr(exc)[:200])
                stream.sock.close()
    opening_s = time.monotonic() - began_opening
    time.sleep(2)  # let the servers settle before measuring memory
    rss_after = sum(map(rss_bytes, api))

    selector = selectors.DefaultSelector()
    for stream in opened:
        selector.register(stream.sock, selectors.EVENT_READ, stream)
    publisher = Services(stack.settings).redis
    latencies: dict[str, list[float]] = {"healthz": [], "poll": []}
    cpu_before, window_began = stack.cpu_seconds(), time.monotonic()
    until = window_began + args.duration
    prober = threading.Thread(target=probe, args=(stack.port, path, auth, until, latencies), daemon=True)
    prober.start()
    published, next_publish, closed = 0, window_began, 0
    while (now := time.monotonic()) < until:
        if now >= next_publish:
            events.publish(publisher, job_id, "progress", PROGRESS | {"iteration": published})
            published, next_publish = published + 1, next_publish + 1.0
        for key, _ in selector.select(timeout=max(0.0, min(next_publish, until) - time.monotonic())):
            if not key.data.read():
                selector.unregister(key.fileobj)
                closed += 1
    time.sleep(1.0)  # the last event's delivery
    for key, _ in selector.select(timeout=0.5):
        key.data.read()
    prober.join()
    window = time.monotonic() - window_began
    cpu_after = stack.cpu_seconds()
    for stream in opened:
        stream.sock.close()

    received = [s.progress for s in opened]
    shares = cpu_shares(cpu_before, cpu_after, window)
    return {
        "streams_asked": args.streams, "streams_open": len(opened), "refused": len(refused),
        "refused_examples": refused[:3], "closed_early": closed, "api_processes": len(api),
        "opening_s": round(opening_s, 1), "window_s": round(window, 1), "events_published": published,
        "events_received_per_stream": {"min": min(received, default=0), "median": statistics.median(received or [0])},
        "api_rss_mib": {"before": round(rss_before / 2**20, 1), "after": round(rss_after / 2**20, 1)},
        "api_kib_per_stream": round((rss_after - rss_before) / 1024 / max(1, len(opened)), 1),
        "cpu_percent_of_one_core": shares,
        "api_cpu_us_per_stream_per_s": round(1e4 * shares["api"] / max(1, len(opened)), 1),
        "healthz": summary([x for x in latencies["healthz"] if x != float("inf")]),
        "poll": summary([x for x in latencies["poll"] if x != float("inf")]),
        "probe_failures": sum(x == float("inf") for v in latencies.values() for x in v),
    }
