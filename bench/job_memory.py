"""Where a job's GPU memory peaks: the allocator's peak between each two iterations of a job.

    python3 bench/job_memory.py --device cuda --size 512             # a default job (its stages)
    python3 bench/job_memory.py --device cuda --size 512 --scales 1 --iterations 80

The capacity model predicts a job's peak from its finest stage, and a worker's default 512 px
job on an H100 peaked at 1610 MB against 709 MB predicted by a fit to one-stage runs
(BENCHMARKS.md, *The second GPU session*). This says when: the callback reads the allocator's peak after
every iteration and resets it, so each interval's peak is its own (the set-up before the first
iteration, a stage's style passes and graph capture, the result after the last). Prints the
intervals that set each stage's peak, what each stage's CUDA graph pool took against the room
checked for it (`loop.GRAPH_ROOM` times the peak above what the job holds: the reset skipped after
the eager iteration before a capture, so that this peak is that iteration's, as in a job whose
peak those set; reset there, the check read ~0 MB on an H200), and one JSON line. CUDA only: a
CPU has no allocator peak.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import CONTENT, STYLE  # noqa: E402  (bench/engine.py)
from shared.images import open_image  # noqa: E402
from shared.params import Params  # noqa: E402
from worker.engine import Iterate, loop, stylize  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--scales", type=int, help="stages (default: the service's)")
    parser.add_argument("--iterations", type=int, help="(default: the service's)")
    args = parser.parse_args()
    if not args.device.startswith("cuda"):
        parser.error("the allocator's peak is CUDA's: --device cuda")
    content, style = open_image(CONTENT), open_image(STYLE)
    given = {k: v for k, v in (("scales", args.scales), ("iterations", args.iterations)) if v is not None}
    stylize(content, [style], Params(size=32, iterations=1, scales=1), device=args.device)  # loads the network
    logging.basicConfig(stream=sys.stderr, format="%(name)s: %(message)s")
    logging.getLogger(loop.__name__).setLevel(logging.DEBUG)  # each capture: its pool, the room checked for
    mb = 2**20
    intervals: list[dict] = []
    first_of_stage: dict[int, int] = {}

    def callback(it: Iterate) -> None:
        intervals.append({"stage": it.scale, "size": [it.width, it.height], "iteration": it.iteration,
                          "peak_mb": round(torch.cuda.max_memory_allocated() / mb),
                          "allocated_mb": round(torch.cuda.memory_allocated() / mb)})
        if it.iteration - first_of_stage.setdefault(it.scale, it.iteration) + 1 != loop.GRAPH_AFTER:
            torch.cuda.reset_peak_memory_stats()  # not before a capture: its room check reads this peak

    before = torch.cuda.memory_allocated() / mb
    result = stylize(content, [style], Params(size=args.size, **given), device=args.device, callback=callback)
    end = {"stage": "end", "peak_mb": round(result.peak_memory_mb), "allocated_mb": round(torch.cuda.memory_allocated() / mb)}
    stages: dict = {}
    for row in intervals:
        if row["stage"] not in stages or row["peak_mb"] > stages[row["stage"]]["peak_mb"]:
            stages[row["stage"]] = row
    for stage, row in stages.items():
        print(f"stage {stage} ({row['size'][0]}x{row['size'][1]}): peak {row['peak_mb']} MB in the interval "
              f"before iteration {row['iteration']}; {row['allocated_mb']} MB held after it", file=sys.stderr)
    print(f"after the last iteration (the result): peak {end['peak_mb']} MB; held before the job "
          f"{before:.0f} MB, after {end['allocated_mb']} MB", file=sys.stderr)
    print(json.dumps({"size": args.size, **given, "held_before_mb": round(before), "stage_peaks": list(stages.values()),
                      "end": end, "first_iterations": intervals[:5]}))


if __name__ == "__main__":
    main()
