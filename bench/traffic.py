"""Per-job database and broker traffic of a GPU worker, and what it means for a fleet.

    python bench/traffic.py                                             # SQLite in a temp dir
    python bench/traffic.py --database-url postgresql://postgres@127.0.0.1:5432/test

With the production defaults (progress every 1 s, lease 60 s renewed every 20 s, checkpoint
every 30 s, a snapshot every 50 iterations) it measures, on a private redis-server:

1. one job run in this process by the worker's own code (`worker.runner.JobRun`), every SQL
   statement counted by kind and table through SQLAlchemy's `before_cursor_execute` event and
   every transaction by its `commit` event; Redis commands from `INFO commandstats`;
2. the same job through a real `celery worker` process: every Redis command the server saw
   (the job's events plus Celery's own: the queue, task events, heartbeats), and the Redis
   commands of that worker sitting idle, per second;
3. the ceilings on this machine: PostgreSQL (if given) committing the progress write (the
   worker's most frequent transaction) from 16 connections as fast as it can, and
   `redis-benchmark` on PUBLISH.

It prints the per-job counts, the rates per worker, and the fleet size at which each store
would be saturated (ceiling / per-worker rate).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import event, update  # noqa: E402

from api.app import create_app  # noqa: E402
from api.stack import free_port  # noqa: E402
from shared import keys, lifecycle  # noqa: E402
from shared.broker import GPU_QUEUE  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.migrate import upgrade  # noqa: E402
from shared.models import Job, utcnow  # noqa: E402
from shared.services import Services  # noqa: E402

TERMINAL = {"succeeded", "failed", "canceled"}


def statement_kind(sql: str) -> str:
    verb = sql.split(None, 1)[0].upper()
    table = re.search(r"(?:INSERT INTO|UPDATE|DELETE FROM|FROM)\s+\"?(\w+)", sql, re.I)
    return f"{verb} {table.group(1) if table else ''}".strip()


def commandstats(client) -> Counter:
    return Counter({name.removeprefix("cmdstat_"): stats["calls"]
                    for name, stats in client.info("commandstats").items()})


def submit(settings: Settings, params: dict) -> str:
    client = create_app(settings).test_client()
    services = Services(settings)
    with services.db.session() as session:
        token = keys.create_key(session, f"bench-{uuid.uuid4().hex[:6]}")
    data = {"content": (io.BytesIO((ROOT / "samples/tubingen.jpg").read_bytes()), "c.jpg"),
            "style": (io.BytesIO((ROOT / "samples/starry_night.jpg").read_bytes()), "s.jpg"),
            "params": json.dumps(params)}
    response = client.post("/v1/jobs", data=data, headers={"Authorization": f"Bearer {token}"},
                           content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def in_process(settings: Settings, params: dict) -> dict:
    """One job through `JobRun` here, with its SQL and Redis commands counted."""
    from shared.broker import create_celery
    from worker.runner import JobRun

    job_id = submit(settings, params)
    services = Services(settings)
    services.redis.delete(GPU_QUEUE)  # the message the API sent: this process runs the job instead
    statements, commits = Counter(), Counter()
    event.listen(services.db.engine, "before_cursor_execute",
                 lambda _c, _cur, sql, *_a: statements.update([statement_kind(sql)]))
    event.listen(services.db.engine, "commit", lambda _c: commits.update(["commit"]))
    before = commandstats(services.redis)
    started = time.monotonic()
    JobRun(services, create_celery(settings), job_id).execute()
    seconds = time.monotonic() - started
    redis_calls = commandstats(services.redis) - before
    with services.db.session() as session:
        job = session.get(Job, job_id)
        status, iterations = job.status, job.progress["iteration"]
    redis_calls["info"] -= 1  # our own reading of the stats
    return {"job": job_id, "status": status, "iterations": iterations, "seconds": round(seconds, 1),
            "sql_statements": dict(statements.most_common()), "sql_statements_total": sum(statements.values()),
            "transactions": commits["commit"], "redis_commands": dict(+redis_calls),
            "redis_commands_total": sum((+redis_calls).values())}


def through_celery(settings: Settings, params: dict, idle_seconds: float, workdir: Path) -> dict:
    """A real worker process: Redis commands per job and per idle second."""
    env = os.environ | settings.to_env()
    log_path = workdir / "worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", "gpu",
                                   "--concurrency", "1", "-n", "bench@%h", "--loglevel", "INFO"],
                                  cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    services = Services(settings)
    try:
        deadline = time.monotonic() + 120
        while b" ready." not in log_path.read_bytes():
            assert worker.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        time.sleep(3)  # past the start-up chatter
        before = commandstats(services.redis)
        time.sleep(idle_seconds)
        idle = commandstats(services.redis) - before
        idle["info"] -= 1
        before = commandstats(services.redis)
        started = time.monotonic()
        job_id = submit(settings, params)
        while True:
            with services.db.session() as session:
                if session.get(Job, job_id).status in TERMINAL:
                    break
            time.sleep(1.0)
        seconds = time.monotonic() - started
        job = commandstats(services.redis) - before
        job["info"] -= 1
        return {"seconds": round(seconds, 1), "redis_commands": dict((+job).most_common()),
                "redis_commands_total": sum((+job).values()),
                "idle_redis_commands_per_second": round(sum((+idle).values()) / idle_seconds, 2),
                "idle_redis_commands": dict((+idle).most_common())}
    finally:
        worker.terminate()
        worker.wait(60)


def postgres_ceiling(url: str, connections: int = 16, seconds: float = 10.0) -> float:
    """Progress writes (UPDATE jobs ... RETURNING + INSERT loss_points, one commit) per second."""
    services = Services(Settings(database_url=url))
    services.db.engine.pool._pool.maxsize = connections + 2  # noqa: SLF001 (a bench, not the app)
    ids = []
    with services.db.session() as session:
        account = keys.live_key(session, keys.create_key(session, "ceiling")).account_id
        for n in range(connections):
            job = lifecycle.create(session, Settings(max_active_jobs=1000, max_active_jobs_per_key=1000),
                                   account_id=account, api_key_id=None, params={}, inputs=[],
                                   request_hash=f"ceiling-{n}")
            session.flush()
            ids.append(job.id)
        session.execute(update(Job).where(Job.id.in_(ids)).values(status="running", lease_owner="bench",
                                                                  lease_expires_at=utcnow()))
        session.commit()
    done, stop = Counter(), time.monotonic() + seconds
    progress = {"iteration": 1, "losses": {"content": 1.0, "style": 1.0, "tv": 1.0, "total": 3.0}}

    def writer(job_id: str) -> None:
        while time.monotonic() < stop:
            with services.db.session() as session:
                lifecycle.renew(session, job_id, "bench", 60, progress)
            done.update([job_id])
    threads = [threading.Thread(target=writer, args=(i,)) for i in ids]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    rate = sum(done.values()) / (time.monotonic() - started)
    services.db.dispose()
    return rate


def redis_ceiling(port: int) -> float:
    """PUBLISH of a progress-sized event (~300 bytes) from 50 connections."""
    payload = json.dumps({"event": "progress", "data": {"iteration": 100, "total": 300, "losses": {
        "content": 0.123456, "style": 0.654321, "tv": 0.0123, "total": 0.789}, "percent": 33.33, "scale": 0,
        "scales": 1, "iterations_per_second": 9.876, "eta_seconds": 20.2, "resumed_from": None}})
    out = subprocess.run(["redis-benchmark", "-p", str(port), "-n", "200000", "-c", "50", "-q", "PUBLISH",
                          "atelier:job:bench", payload], capture_output=True, text=True, timeout=120).stdout
    return float(re.findall(r"([\d.]+) requests per second", out.replace("\r", "\n"))[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="default: SQLite in a temporary directory")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    args = parser.parse_args()
    params = {"size": args.size, "iterations": args.iterations}  # snapshot_every: the default (50)

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        port = free_port()
        redis_server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                         "--appendonly", "no"], stdout=subprocess.DEVNULL)
        url = args.database_url or f"sqlite:///{workdir / 'atelier.db'}"
        if args.database_url:
            from sqlalchemy import create_engine, text
            from shared.db import normalize_url
            admin = create_engine(normalize_url(args.database_url), isolation_level="AUTOCOMMIT")
            name = f"atelier_bench_{uuid.uuid4().hex[:8]}"
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            url = normalize_url(args.database_url).set(database=name).render_as_string(hide_password=False)
        try:
            time.sleep(0.5)
            upgrade(url)
            settings = Settings(database_url=url, redis_url=f"redis://127.0.0.1:{port}/0",
                                storage_dir=workdir / "storage", device="cpu", max_size=max(1024, args.size))
            report = {"load_average_before": os.getloadavg()[0],
                      "in_process": in_process(settings, params),
                      "celery_worker": through_celery(settings, params, args.idle_seconds, workdir)}
            report["load_average_after"] = os.getloadavg()[0]
            report["redis_publish_ceiling_per_second"] = redis_ceiling(port)
            if url.startswith("postgresql"):
                report["postgres_progress_write_ceiling_per_second"] = round(postgres_ceiling(url), 1)
        finally:
            redis_server.terminate()
            if args.database_url:
                with admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    job = report["in_process"]
    report["per_worker_per_second"] = {
        "sql_transactions": round(job["transactions"] / job["seconds"], 2),
        "sql_statements": round(job["sql_statements_total"] / job["seconds"], 2),
        "redis_commands_job": round(report["celery_worker"]["redis_commands_total"] / report["celery_worker"]["seconds"], 2),
    }
    if "postgres_progress_write_ceiling_per_second" in report:
        report["fleet_at_postgres_ceiling"] = int(report["postgres_progress_write_ceiling_per_second"]
                                                  / report["per_worker_per_second"]["sql_transactions"])
    report["fleet_at_redis_ceiling"] = int(report["redis_publish_ceiling_per_second"]
                                           / report["per_worker_per_second"]["redis_commands_job"])
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
