"""Graceful stop of a GPU worker: on SIGTERM a running job checkpoints and is handed back.

Celery's warm shutdown (SIGTERM) waits for the running task to finish, which for a long job
is far longer than any orchestrator waits before SIGKILL. So instead:

- the worker's main process, on shutdown, passes SIGTERM on to its pool children (a container
  runtime signals only the main process);
- a pool child running a task does not die of SIGTERM (billiard's handler exits) but sets
  `STOP`; between tasks it exits on SIGTERM as before;
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

from celery.signals import task_postrun, task_prerun, worker_init, worker_process_init, worker_shutting_down
from celery.worker import state as worker_state

log = logging.getLogger(__name__)

STOP = threading.Event()   # set in the process that runs jobs: hand the running job back
_controller: dict[str, object] = {}


_child: dict[str, object] = {}   # in a pool child: the SIGTERM handler billiard installed


def _request_stop(signum, _frame) -> None:
    """While a task runs: hand its job back. A repeated SIGTERM (the process group's and the one
    the main process passes on) changes nothing: the job ends within an iteration anyway."""
    if not STOP.is_set():
        log.warning("received %s: the running job (if any) will checkpoint and be handed back",
                    signal.Signals(signum).name)
    STOP.set()


@worker_process_init.connect
def _mark_pool_child(**_kwargs) -> None:
    STOP.clear()
    _child["pool"] = True


def _in_pool_child_main_thread() -> bool:
    return bool(_child.get("pool")) and threading.current_thread() is threading.main_thread()


@task_prerun.connect
def _install_child_handler(**_kwargs) -> None:
    """In a prefork pool child, where the task runs in the main thread. Installed per task, not in
    `worker_process_init`: billiard sets its own SIGTERM handler (exit) after that signal."""
    if _in_pool_child_main_thread() and signal.getsignal(signal.SIGTERM) is not _request_stop:
        _child["previous"] = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _request_stop)


@task_postrun.connect
def _restore_child_handler(**_kwargs) -> None:
    """Between tasks an idle pool child exits on SIGTERM, as billiard means it to."""
    if _in_pool_child_main_thread() and "previous" in _child:
        signal.signal(signal.SIGTERM, _child.pop("previous"))
    if STOP.is_set() and _child.get("pool"):
        log.info("process %d: job handed back; waiting for the worker to shut down", os.getpid())


@worker_init.connect
def _remember_worker(sender=None, **_kwargs) -> None:
    _controller["worker"] = sender


@worker_shutting_down.connect
def _forward_to_children(sig=None, how=None, **_kwargs) -> None:
    """Main process: the job runs in a pool child (prefork) or here (solo, threads)."""
    STOP.set()
    if not worker_state.active_requests:  # no task running: idle pool children just exit as usual
        return
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
