"""What one L-BFGS step costs a batch of jobs: torch.optim.LBFGS stepped once per job (how the loop
ran before `worker/engine/optimizers.py`) against our batched L-BFGS stepping all jobs at once.

    .venv/bin/python bench/optimizer_step.py [--jobs 1 8] [--size 256] [--device cpu|cuda]

Per step, with a full history (20 pairs; measured after 25 steps): the torch operators dispatched
that compute something (views and empty allocations left out: on a GPU about one kernel launch
each), the values read back to the host (each a device sync on
a GPU: `.item()`, `float(t)`, `if t`), and the milliseconds per step on this device. The
gradient is that of a fixed quadratic, so only the optimiser's own work is measured.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.engine.optimizers import HISTORY, LBFGS  # noqa: E402

from iteration_ops import Dispatched  # noqa: E402  (bench/iteration_ops.py)

FILL, MEASURED = 25, 10


def gradient(x: torch.Tensor, curvature: torch.Tensor) -> torch.Tensor:
    return curvature * x


def torch_per_job(jobs: int, pixels: int, device: str):
    """One torch L-BFGS per job, each stepped on its own image (the gradient set by hand)."""
    images = [torch.rand(pixels, device=device, requires_grad=True) for _ in range(jobs)]
    curvature = torch.rand(pixels, device=device) + 0.5
    optimizers = [torch.optim.LBFGS([x], lr=1, max_iter=1, history_size=HISTORY, tolerance_grad=-1,
                                    tolerance_change=-1) for x in images]

    def step() -> None:
        for x, optimizer in zip(images, optimizers):
            def closure(x=x) -> torch.Tensor:
                x.grad = gradient(x.detach(), curvature)
                return (x.detach() * x.grad).sum()
            optimizer.step(closure)
    return step


def ours_batched(jobs: int, pixels: int, device: str):
    x = torch.rand(jobs, pixels, device=device)
    curvature = torch.rand(pixels, device=device) + 0.5
    optimizer = LBFGS(x)

    def step() -> None:
        optimizer.step(x, gradient(x, curvature))
    return step


def measure(step, device: str) -> dict:
    for _ in range(FILL):
        step()
    with Dispatched() as counted:
        step()
    times = []
    for _ in range(MEASURED):
        _sync(device)
        began = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - began)
    return {"ops": counted.ops, "host_reads": counted.reads, "ms": round(1000 * statistics.median(times), 3)}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--size", type=int, default=256, help="longest side; the image is 4:3")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    pixels = 3 * args.size * (args.size * 3 // 4)
    rows = []
    for jobs in args.jobs:
        row = {"jobs": jobs, "size": args.size, "device": args.device,
               "torch_per_job": measure(torch_per_job(jobs, pixels, args.device), args.device),
               "ours_batched": measure(ours_batched(jobs, pixels, args.device), args.device)}
        rows.append(row)
        print(f"{jobs} job(s) at {args.size} px: torch per job {row['torch_per_job']}, ours batched {row['ours_batched']}",
              file=sys.stderr)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
