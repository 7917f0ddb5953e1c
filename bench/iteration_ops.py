"""What one iteration of the engine's loop asks of the device, for a batch of N jobs.

    .venv/bin/python bench/iteration_ops.py [--jobs 1 8] [--size 64] [--iterations 5] [--after 25] [--device cpu]

Counts, per iteration of a batch (network forward and backward, the loss terms, the optimiser
step, the loop's own bookkeeping, a callback per job that reads nothing), the torch operators
that compute something (views and empty allocations left out: on a GPU about one kernel launch
each) and the values read back to the host (each a device sync on a GPU). Tübingen x The Starry
Night, one scale, after `--after` iterations (by 21 the L-BFGS history is full: the steady state). The counts do not depend on the machine or its
load; the size only changes what each operator costs. Runs against whatever `worker.engine` is
importable, so the same command measures an older commit in its own checkout.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.images import open_image  # noqa: E402
from shared.params import Params  # noqa: E402
from worker.engine import Iterate, Member, stylize_batch  # noqa: E402

from engine import CONTENT, STYLE  # noqa: E402  (bench/engine.py)


class Dispatched(TorchDispatchMode):
    """Counts the operators dispatched that compute (not views, not `empty`) and the host reads."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += not func.is_view and func is not torch.ops.aten.empty.memory_format
        self.reads += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


def per_iteration(jobs: int, size: int, iterations: int, after: int, device: str) -> dict:
    counted = Dispatched()

    def first_job(it: Iterate) -> None:  # the window: from its callback at `after` to its last
        if it.iteration == after:
            counted.__enter__()
        elif it.iteration == after + iterations:
            counted.__exit__(None, None, None)

    params = Params(size=size, scales=1, iterations=after + iterations)
    content, style = open_image(CONTENT), open_image(STYLE)
    members = [Member(content, [style], params, callback=first_job if job == 0 else (lambda it: None))
               for job in range(jobs)]
    stylize_batch(members, device=device)
    return {"jobs": jobs, "size": size, "ops": counted.ops / iterations, "host_reads": counted.reads / iterations}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--after", type=int, default=25)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    rows = [per_iteration(jobs, args.size, args.iterations, args.after, args.device) for jobs in args.jobs]
    for row in rows:
        print(f"{row['jobs']} job(s): {row['ops']:.0f} operators, {row['host_reads']:.1f} host reads per iteration",
              file=sys.stderr)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
