"""Keeping a machine's processes up: `atelier run` (the whole stack) and `atelier worker` (a
GPU box's workers) both hand their children to a `Supervisor`.

A child that dies is restarted (at once if it had run a while, with a growing delay if it keeps
dying) and the fact logged; SIGTERM, Ctrl-C, SIGHUP (its terminal closed) or SIGQUIT stops
everything, politely first, then by force after a grace period, and so does the supervisor's own
failure: each child runs in a session of its own, and nothing else would stop it. Children marked
`stop_last` (an embedded Redis) stop after the others.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger("atelier.supervisor")

STOP_GRACE_SECONDS = 10.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
MAX_RESTART_DELAY = 30.0


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # on top of the supervisor's environment
    stop_last: bool = False
    process: subprocess.Popen | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = 0.0


class Supervisor:
    def __init__(self, children: list[Child], env: dict[str, str], grace_seconds: float = STOP_GRACE_SECONDS) -> None:
        self.children, self.env, self.grace_seconds = children, env, grace_seconds
        self.stopping = False

    def install_signal_handlers(self) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._stop)

    def run(self, started: Callable[[], None] = lambda: None) -> int:
        """Start every child, call `started`, keep them up until a stop signal; then stop them (and
        on the way out of an error too)."""
        self.install_signal_handlers()
        try:
            for child in self.children:
                self._start(child)
            started()
            while not self.stopping:
                self._supervise()
                time.sleep(0.5)
        finally:
            self._stop_all()
        return 0

    def _start(self, child: Child) -> None:
        child.process = subprocess.Popen(child.argv, env=self.env | child.env, start_new_session=True)
        child.started_at = time.monotonic()
        log.info("started %s (pid %d)", child.name, child.process.pid)

    def _supervise(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.process is None:
                if now >= child.next_start:
                    self._start(child)
                continue
            code = child.process.poll()
            if code is None:
                continue
            # a child that ran a while before dying restarts at once; a crash loop backs off
            child.restarts = 0 if now - child.started_at > 60 else child.restarts + 1
            delay = min(MAX_RESTART_DELAY, 2.0 ** child.restarts - 1)
            log.warning("%s (pid %d) exited with code %s; restarting in %.0fs", child.name, child.process.pid, code, delay)
            child.process, child.next_start = None, now + delay

    def _stop(self, signum: int, _frame) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        self.stopping = True

    def _stop_all(self) -> None:
        """Everything but the `stop_last` children first (a worker finishing its iteration may
        still need Redis), those last."""
        running = [c for c in self.children if c.process is not None and c.process.poll() is None]
        for group in ([c for c in running if not c.stop_last], [c for c in running if c.stop_last]):
            for child in group:
                child.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + self.grace_seconds
            for child in group:
                try:
                    child.process.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop in %.0fs; killing it", child.name, self.grace_seconds)
                    os.killpg(child.process.pid, signal.SIGKILL)
                    child.process.wait()
                log.info("stopped %s", child.name)
