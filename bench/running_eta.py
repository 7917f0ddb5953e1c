"""How well a running job's ETA (`progress.eta_seconds`) foretells its end: one job run in this
process, warm (as in a worker), its ETA read once a second three ways and set against the time
it then really took.

    .venv/bin/python bench/running_eta.py [--size 384] [--scales N] [--iterations N] [--device cpu]

The three: the iterations left at the rate over the whole run, its set-up included (how the
worker told it before); at the rate since its first iteration; and the worker's own
(`worker.progress.eta_seconds`), the model's `Timeline` of what is left at the pace the run has kept.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared import capacity  # noqa: E402
from shared.images import open_image  # noqa: E402
from shared.params import Params  # noqa: E402


def main() -> int:
    from worker.engine import Iterate, resolve_device, resolve_precision, stylize, warm_up
    from worker.progress import eta_seconds

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--scales", type=int)
    parser.add_argument("--iterations", type=int)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    warm_up(device)
    content, style = open_image(ROOT / "samples/tubingen.jpg"), open_image(ROOT / "samples/starry_night.jpg")
    params = Params(size=args.size, scales=args.scales, iterations=args.iterations)
    line = capacity.timeline(params, content.size, [style.size], capacity.device_kind(device),
                             resolve_precision(params.precision, device))
    reads: list[tuple[float, int, int, float | None, float | None, float | None]] = []
    started = time.perf_counter()

    def read(it: Iterate) -> None:
        now = time.perf_counter() - started
        if not reads or now - reads[-1][0] >= 1.0:
            whole_run = (it.total - it.iteration) / (it.iteration / it.elapsed)
            rate = (it.total - it.iteration) / it.iterations_per_second if it.iterations_per_second else None
            reads.append((now, it.iteration, it.scale, whole_run, rate, eta_seconds(it, line)))

    stylize(content, [style], params, device=device, callback=read)
    took = time.perf_counter() - started
    print(f"{args.size} px on {device}, {reads[-1][2] + 1} stages: {took:.1f} s in all")
    print("at | iteration | stage | left in fact | whole-run rate | rate since the first iteration | timeline")
    print("--- | --- | --- | --- | --- | --- | ---")
    for now, iteration, stage, *etas in reads:
        print(f"{now:.1f} s | {iteration} | {stage + 1} | {took - now:.1f} | "
              + " | ".join("-" if eta is None else f"{eta:.1f}" for eta in etas))
    return 0


if __name__ == "__main__":
    sys.exit(main())
