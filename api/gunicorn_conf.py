"""The API server's gunicorn configuration, the one definition that `atelier run`, the Docker
image, the benchmarks and the tests use (`api.stack.gunicorn_command`):

    gunicorn -c api/gunicorn_conf.py --bind 0.0.0.0:8000

gevent workers: each connection is a greenlet, so an open event stream (held for as long as its
job runs) costs a few KiB and no thread, and `/healthz`, polls and submissions are served
beside thousands of them. What the handlers wait on yields to the others: Redis and the broker
(redis-py sockets), PostgreSQL (psycopg 3 waits cooperatively once gevent has patched
`select`), the event hub's queues; SQLite calls are short local file I/O and block their process
while they run. Override any of these with `GUNICORN_CMD_ARGS` (e.g. `--workers 4`).

Gunicorn reads this file by path, not as `api.gunicorn_conf`, so its master process imports
nothing of the app (and nothing that gevent would have to patch after the fact).
"""
import os
import resource

wsgi_app = "api.app:create_app()"
worker_class = "gevent"
workers = 2                  # processes; on more cores, about one per core
worker_connections = 5000    # concurrent connections per process: event streams and everything else
timeout = 120                # seconds a worker may not report in before the master restarts it
keepalive = 5                # seconds an idle keep-alive connection is kept open


def on_starting(server) -> None:
    """Each connection is a file descriptor: let the workers open as many as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = server.cfg.workers * server.cfg.worker_connections + 1024
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        server.log.info("raised the open-file limit from %d to %d", soft, new)


def child_exit(server, worker) -> None:
    """A dead worker's live gauges must not linger in the multiprocess metrics (`shared.metrics`).
    prometheus_client is imported here, in the master, only once a worker has died."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
