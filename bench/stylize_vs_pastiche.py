"""`atelier stylize` start-up, and its whole-process time against pastiche's, doing the same work.

    .venv/bin/python bench/stylize_vs_pastiche.py [--runs 5] [--size 256] [--steps 60]

1. Time to the first iteration: `--runs` fresh processes each import the engine (torch), then run
   the defaults at 512 px (`stylize`, as `atelier stylize` calls it) and stop at the first iteration's
   callback; reports the seconds from the end of the imports to that callback, and the imports.
2. Whole process: `atelier stylize` (as `python -m shared.cli stylize`: --size SIZE --scales 1
   --optimizer adam --iterations STEPS --device cpu, its quality report included) against
   `python -m pastiche` (--size SIZE --optimizer adam --num-steps STEPS --device cpu), the same
   image pair, `--runs` times each, interleaved and alternating which goes first, so that a change
   in the machine's load hits both. Wall and CPU (user + system) seconds per run; medians, ranges,
   and the ratio of the medians.
Prints the load average before and after and, last, one JSON line with every figure.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from timing import summary, timed  # bench/timing.py (this script's folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
CONTENT = ROOT / "samples" / "tubingen.jpg"
STYLE = ROOT / "samples" / "starry_night.jpg"


def first_iteration_child() -> None:
    """Runs in a fresh process: imports, then the defaults up to the first iteration's callback."""
    started = time.perf_counter()
    sys.path.insert(0, str(ROOT))
    from shared.images import open_image
    from shared.params import Params
    from worker.engine import stylize
    imported = time.perf_counter()
    seen: list[float] = []

    def callback(_) -> bool:
        seen.append(time.perf_counter())
        return True  # stop: only the start-up is measured

    stylize(open_image(CONTENT), [open_image(STYLE)], Params(), device="cpu", callback=callback)
    print(json.dumps({"imports": imported - started, "to_first_iteration": seen[0] - imported}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each measurement (default: %(default)s)")
    parser.add_argument("--size", type=int, default=256, help="whole-process comparison size (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=60, help="Adam steps in the comparison (default: %(default)s)")
    parser.add_argument("--first-iteration-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.first_iteration_child:
        return first_iteration_child()
    load_before = Path("/proc/loadavg").read_text().split()[:3]

    starts = []
    for _ in range(args.runs):
        out = subprocess.run([sys.executable, __file__, "--first-iteration-child"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout
        starts.append(json.loads(out.strip().splitlines()[-1]))
    first = summary([s["to_first_iteration"] for s in starts])
    imports = summary([s["imports"] for s in starts])
    print(f"imports to first iteration (defaults, 512 px): median {first['median']:.2f} s "
          f"({first['min']:.2f}-{first['max']:.2f}); the imports themselves {imports['median']:.2f} s", flush=True)

    with tempfile.TemporaryDirectory() as directory:
        ours = [sys.executable, "-m", "shared.cli", "stylize", str(CONTENT), str(STYLE), "-o", f"{directory}/ours.png",
                "--size", str(args.size), "--scales", "1", "--optimizer", "adam", "--iterations", str(args.steps),
                "--device", "cpu"]
        theirs = [sys.executable, "-m", "pastiche", "-c", str(CONTENT), "-s", str(STYLE), "-o", f"{directory}/p.png",
                  "--size", str(args.size), "--optimizer", "adam", "--num-steps", str(args.steps), "--device", "cpu",
                  "--seed", "0", "--no-verbose"]
        timed(ours, cwd=ROOT), timed(theirs, cwd=ROOT)  # warm-up: file caches
        runs: dict[str, list[tuple[float, float]]] = {"atelier stylize": [], "pastiche": []}
        for i in range(args.runs):
            order = [("atelier stylize", ours), ("pastiche", theirs)]
            for name, command in order if i % 2 == 0 else order[::-1]:
                runs[name].append(timed(command, cwd=ROOT))
    figures = {name: {"wall": summary([w for w, _ in r]), "cpu": summary([c for _, c in r])} for name, r in runs.items()}
    for name, f in figures.items():
        print(f"{name:16} wall {f['wall']['median']:.2f} s ({f['wall']['min']:.2f}-{f['wall']['max']:.2f})   "
              f"CPU {f['cpu']['median']:.2f} s ({f['cpu']['min']:.2f}-{f['cpu']['max']:.2f})", flush=True)
    ratio = figures["atelier stylize"]["wall"]["median"] / figures["pastiche"]["wall"]["median"]
    print(f"atelier stylize / pastiche, median wall: {ratio:.3f}")
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    print(f"load average before {' '.join(load_before)}, after {' '.join(load_after)}")
    print(json.dumps({"runs": args.runs, "size": args.size, "steps": args.steps, "first_iteration": first,
                      "imports": imports, "whole_process": figures, "ratio_median_wall": round(ratio, 3),
                      "load_before": load_before, "load_after": load_after}))


if __name__ == "__main__":
    main()
