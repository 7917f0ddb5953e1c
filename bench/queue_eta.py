"""How well a queued job's predicted start and end (`queue` on the job) come true: submit jobs of
different sizes at once to a running stack (`atelier run`), read each one's standing from the
submission's response, then set it against when the job really started and ended.

    python bench/queue_eta.py --url http://127.0.0.1:8000 --key $ATELIER_KEY --sizes 160 128 96 192

The sizes differ so that no two jobs run as one batch (which would make them start sooner than
predicted); the stack's workers should be idle when it starts. Times are the server's: a job's
`started_at` and `finished_at` against its `created_at`, when its standing was worked out.
"""
from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api.client import Client  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--key", required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[160, 128, 96, 192])
    parser.add_argument("--content", default=str(ROOT / "samples" / "tubingen.jpg"))
    parser.add_argument("--style", default=str(ROOT / "samples" / "starry_night.jpg"))
    args = parser.parse_args()

    with Client(args.url, args.key) as client:
        jobs = [client.submit(args.content, args.style, size=size, snapshot_every=0) for size in args.sizes]
        print("size | position | starts in: predicted / actual | ends in: predicted / actual | run: predicted / actual")
        print("--- | --- | --- | --- | ---")
        for size, job in zip(args.sizes, jobs):
            queue, done = job.queue or {}, client.wait(job, timeout=3600)
            created, started, finished = (datetime.fromisoformat(done.data[k])
                                          for k in ("created_at", "started_at", "finished_at"))
            print(f"{size} | {queue.get('position')} | {_s(queue.get('starts_in_seconds'))} / "
                  f"{_s((started - created).total_seconds())} | {_s(queue.get('eta_seconds'))} / "
                  f"{_s((finished - created).total_seconds())} | {_s((job.data['prediction'] or {}).get('seconds'))} / "
                  f"{_s((finished - started).total_seconds())}")
    return 0


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f} s"


if __name__ == "__main__":
    sys.exit(main())
