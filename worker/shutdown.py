"""Graceful stop of a GPU worker: on SIGTERM a running job checkpoints and is handed back.

Celery's warm shutdown (SIGTERM) waits for the running task to finish, which for a long job
is far longer than any orchestrator waits before SIGKILL. So instead:

- the worker's main process, on shutdown, passes SIGTERM on to its pool children (a container
  runtime signals only the main process);
- a pool child running a task does not die of the first SIGTERM (billiard's handler exits) but
  sets `STOP`; a second SIGTERM does what billiard's handler does;
- the running job's engine callback sees `STOP`, the engine stops after that iteration, and
  `worker.runner` saves the checkpoint, puts the job back to `queued` and sends it to the
  broker again, so another worker resumes it at once. Then the task returns, the message is
  acked and the warm shutdown completes.
"""
from __future__ import annotations

import logging
import os
import signal
import threading

from celery.signals import task_prerun, worker_init, worker_process_init, worker_shutting_down

log = logging.getLogger(__name__)

STOP = threading.Event()   # set in the process that runs jobs: hand the running job back
_controller: dict[str, object] = {}


_child: dict[str, object] = {}   # in a pool child: the SIGTERM handler billiard installed


def _request_stop(signum, frame) -> None:
    """First SIGTERM: hand the running job back. A second one: what billiard does (exit)."""
    if STOP.is_set():
        previous = _child.get("previous")
        signal.signal(signum, previous if callable(previous) or previous in (signal.SIG_DFL, signal.SIG_IGN)
                      else signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
        else:
            os.kill(os.getpid(), signum)
        return
    log.warning("received %s: the running job (if any) will checkpoint and be handed back", signal.Signals(signum).name)
    STOP.set()


@worker_process_init.connect
def _mark_pool_child(**_kwargs) -> None:
    STOP.clear()
    _child["pool"] = True


@task_prerun.connect
def _install_child_handler(**_kwargs) -> None:
    """In a prefork pool child, where the task runs in the main thread. Installed here, not in
    `worker_process_init`: billiard sets its own SIGTERM handler (exit) after that signal."""
    if not _child.get("pool") or threading.current_thread() is not threading.main_thread():
        return
    current = signal.getsignal(signal.SIGTERM)
    if current is not _request_stop:
        _child["previous"] = current
        signal.signal(signal.SIGTERM, _request_stop)


@worker_init.connect
def _remember_worker(sender=None, **_kwargs) -> None:
    _controller["worker"] = sender


@worker_shutting_down.connect
def _forward_to_children(sig=None, how=None, **_kwargs) -> None:
    """Main process: the job runs in a pool child (prefork) or here (solo, threads)."""
    STOP.set()
    worker = _controller.get("worker")
    pool = getattr(worker, "pool", None)
    try:
        children = list((pool.info or {}).get("processes", [])) if pool is not None else []
    except Exception:  # the pool may be half torn down already
        children = []
    for pid in children:
        if pid and pid != os.getpid():
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    log.info("shutting down (%s, %s): asked pool processes %s to hand back their jobs", sig, how, children)
