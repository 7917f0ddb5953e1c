"""gunicorn server hooks (`--config python:api.gunicorn_hooks`, see `api.stack.gunicorn_command`)."""
from shared import metrics


def child_exit(_server, worker) -> None:
    """A dead API worker's live gauges must not linger in the multiprocess metrics."""
    metrics.process_exited(worker.pid)
