"""Open event streams for `bench/load.py --streams N`: how many the API holds, what each costs it,
and how polls and submissions fare while they are open.

The streams follow one job that the benchmark holds `running` itself (created and claimed through
`shared.lifecycle`, never sent to the broker, so no worker runs it and its streams stay open).
They are opened in batches, each read until its first event; then, while the load runs (or, with
`--clients 0`, while a probe polls `/healthz` and the job ten times a second), one thread
publishes a `progress` event on the job's channel every second, as a running job's worker does,
and reads every stream: a single-threaded selector loop, whatever their number.

Reported: the streams held (and any refused), the API processes' resident memory before and
after opening them, the events each stream received out of those published, and the probe's
latencies; `bench/load.py` adds the CPU of every part over the window (per stream, when no
clients ran beside them).
"""
from __future__ import annotations

import http.client
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


class Streams:
    def __init__(self, stack, count: int, image: bytes) -> None:
        from shared import lifecycle
        from shared.keys import live_key
        from shared.models import InputRole
        from shared.services import Services
        from shared.storage import sha256

        self.stack, self.count = stack, count
        self.token = stack.keys(1)[0]
        self.services = Services(stack.settings)
        with self.services.db.session() as session:
            account = live_key(session, self.token).account_id
            job = lifecycle.create(session, stack.settings, self.services.storage, account_id=account, api_key_id=None,
                                   params={"size": 32}, request_hash="bench",
                                   inputs=[lifecycle.NewInput(role, sha256(image), None, len(image), image)
                                           for role in (InputRole.CONTENT, InputRole.STYLE)])
            session.commit()
            self.job_id = job.id
            assert lifecycle.claim(session, job.id, "bench", lease_seconds=86400, max_attempts=1)
        self.path = f"/v1/jobs/{self.job_id}"
        self.opened: list[Stream] = []
        self.refused: list[str] = []
        self.published = self.closed = 0
        self.latencies: dict[str, list[float]] = {"healthz": [], "poll": []}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def open(self) -> None:
        api = self.stack.api_pids()
        self.rss_before = sum(map(rss_bytes, api))
        began = time.monotonic()
        for start in range(0, self.count, BATCH):
            batch = []
            for _ in range(min(BATCH, self.count - start)):
                try:
                    batch.append(Stream(self.stack.port, f"{self.path}/events", self.token))
                except OSError as exc:
                    self.refused.append(repr(exc)[:200])
            for stream in batch:
                try:
                    stream.first_event()
                    self.opened.append(stream)
                except (OSError, ConnectionError) as exc:
                    self.refused.append(repr(exc)[:200])
                    stream.sock.close()
        self.opening_s = time.monotonic() - began
        time.sleep(2)  # let the servers settle before measuring memory
        self.rss_after = sum(map(rss_bytes, api))

    def start(self, probe: bool) -> None:
        self._threads.append(threading.Thread(target=self._relay, daemon=True))
        if probe:
            self._threads.append(threading.Thread(target=self._probe, daemon=True))
        for thread in self._threads:
            thread.start()

    def _relay(self) -> None:
        from shared import events

        selector = selectors.DefaultSelector()
        for stream in self.opened:
            selector.register(stream.sock, selectors.EVENT_READ, stream)
        publisher, next_publish = self.services.redis, time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() >= next_publish:
                events.publish(publisher, self.job_id, "progress", PROGRESS | {"iteration": self.published})
                self.published, next_publish = self.published + 1, next_publish + 1.0
            for key, _ in selector.select(timeout=max(0.0, min(0.2, next_publish - time.monotonic()))):
                if not key.data.read():
                    selector.unregister(key.fileobj)
                    self.closed += 1
        deadline = time.monotonic() + 1.5  # the last event's delivery
        while time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.1):
                key.data.read()

    def _probe(self) -> None:
        auth = {"Authorization": f"Bearer {self.token}"}
        while not self._stop.is_set():
            for name, route, headers in (("healthz", "/healthz", {}), ("poll", self.path, auth)):
                began = time.perf_counter()
                connection = http.client.HTTPConnection("127.0.0.1", self.stack.port, timeout=30)
                try:
                    connection.request("GET", route, headers=headers)
                    ok = connection.getresponse().status == 200
                except OSError:
                    ok = False
                finally:
                    connection.close()
                self.latencies[name].append(time.perf_counter() - began if ok else float("inf"))
            time.sleep(0.1)

    def stop(self, summary) -> dict:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        for stream in self.opened:
            stream.sock.close()
        received = [s.progress for s in self.opened]
        report = {
            "streams_asked": self.count, "streams_open": len(self.opened), "refused": len(self.refused),
            "refused_examples": self.refused[:3], "closed_early": self.closed,
            "api_processes": len(self.stack.api_pids()), "opening_s": round(self.opening_s, 1),
            "events_published": self.published,
            "events_received_per_stream": {"min": min(received, default=0),
                                           "median": statistics.median(received or [0])},
            "api_rss_mib": {"before": round(self.rss_before / 2**20, 1), "after": round(self.rss_after / 2**20, 1)},
            "api_kib_per_stream": round((self.rss_after - self.rss_before) / 1024 / max(1, len(self.opened)), 1),
        }
        if self.latencies["poll"]:
            report |= {name: summary([x for x in values if x != float("inf")])
                       for name, values in self.latencies.items()}
            report["probe_failures"] = sum(x == float("inf") for v in self.latencies.values() for x in v)
        self.services.db.dispose()
        return report
