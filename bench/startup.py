"""Start-up time of the `atelier` commands that do not run the engine (goal: well under a second).

    .venv/bin/python bench/startup.py [--runs 7]

Each command runs `--runs` times as a fresh process, as the `atelier` script runs it
(`python -m shared.cli ...`), after one unmeasured run; `keys create` writes to a throwaway SQLite
database, migrated first (as `make run` does). Wall time per run, and the CPU time (user + system) the process
used, which a loaded machine inflates less; prints the median and range of each per command, the
load average before and after, and, last, one JSON line with every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from timing import summary, timed  # bench/timing.py (this script's folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "atelier --help": ["--help"],
    "atelier submit --help": ["submit", "--help"],
    "atelier jobs list --help": ["jobs", "list", "--help"],
    "atelier stylize --help": ["stylize", "--help"],
    "atelier keys create NAME": ["keys", "create", "bench"],
}


def seconds(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one `atelier` run."""
    return timed([sys.executable, "-m", "shared.cli", *args], cwd=ROOT, env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="measured runs per command (default: %(default)s)")
    args = parser.parse_args()
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    figures = {}
    with tempfile.TemporaryDirectory() as directory:
        env = os.environ | {"ATELIER_DATABASE_URL": f"sqlite:///{directory}/bench.db"}
        seconds(["migrate"], env)
        for name, command in COMMANDS.items():
            seconds(command, env)  # warm-up: file caches, and the database's migration
            runs = [seconds(command, env) for _ in range(args.runs)]
            wall, cpu = summary([w for w, _ in runs], 3), summary([c for _, c in runs], 3)
            figures[name] = {"wall": wall, "cpu": cpu}
            print(f"{name:26} wall {wall['median']:.2f} s ({wall['min']:.2f}-{wall['max']:.2f})   "
                  f"CPU {cpu['median']:.2f} s ({cpu['min']:.2f}-{cpu['max']:.2f})", flush=True)
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    print(f"load average before {' '.join(load_before)}, after {' '.join(load_after)}")
    print(json.dumps({"runs": args.runs, "seconds": figures, "load_before": load_before, "load_after": load_after}))


if __name__ == "__main__":
    main()
