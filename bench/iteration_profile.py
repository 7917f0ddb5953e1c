"""Where an iteration's time goes: torch.profiler over the engine's loop at one size, one scale.

    python bench/iteration_profile.py [--device cuda] [--size 1024] [--iterations 10] [--precision auto] [--compile]
                                      [--out DIR]

Profiles `--iterations` iterations after the warm-up (`bench/engine.py`'s WARMUP: past a CUDA
graph's capture; Tübingen x The Starry Night, the default layers and weights) and prints the
operators that took the most time on the device (self time; on a CPU, CPU time), the wall time
per iteration and, on a GPU, how much of it the device was busy (the sum of kernel times over
the wall time: what launch overhead and host waits leave) and the kernels' time by kind
(`KINDS`: convolutions, matrix products, pooling, ...). --compile profiles the loop with
`worker.engine.loop.COMPILE` (torch.compile; its Triton kernels are a kind of their own). With
--out, writes the table and a Chrome trace (chrome://tracing, Perfetto) there.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.images import open_image  # noqa: E402
from shared.params import Params  # noqa: E402
from worker.engine import Iterate, loop, resolve_device, resolve_precision, stylize  # noqa: E402

from engine import CONTENT, STYLE, WARMUP, sync  # noqa: E402  (bench/engine.py)


# kernel kinds by a piece of the kernel's name, first match wins (TorchInductor's Triton, cuDNN,
# cuBLAS, CUTLASS, ATen)
KINDS = (("fused by torch.compile (Triton)", ("triton_",)), ("conv forward", ("fprop",)),
         ("conv input gradient", ("dgrad",)), ("max pooling", ("max_pool",)),
         ("matrix products", ("gemm", "gemv", "trsm", "cutlass")), ("ReLU", ("threshold", "clamp")),
         ("copies and casts", ("copy",)), ("reductions", ("reduce",)), ("other elementwise", ("elementwise",)))


def by_kind(kernels: list, iterations: int) -> dict[str, dict[str, float]]:
    """Kernel time (ms per iteration) and launches per iteration, by `KINDS`."""
    kinds: dict[str, dict[str, float]] = {}
    for kernel in kernels:
        kind = next((k for k, pieces in KINDS if any(piece in kernel.key for piece in pieces)), "other")
        entry = kinds.setdefault(kind, {"ms": 0.0, "kernels": 0.0})
        entry["ms"] += kernel.self_device_time_total / 1e3 / iterations
        entry["kernels"] += kernel.count / iterations
    return {k: {n: round(v, 3) for n, v in e.items()} for k, e in sorted(kinds.items(), key=lambda i: -i[1]["ms"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--compile", action="store_true", help="with worker.engine.loop.COMPILE")
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = resolve_device(args.device)
    loop.COMPILE = args.compile
    cuda = device.startswith("cuda")
    profiler = profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else []))
    stamps: list[float] = []

    def callback(it: Iterate) -> None:
        if it.iteration == WARMUP:
            profiler.start()  # before the clock: starting it takes a while
            sync(device)
            stamps.append(time.perf_counter())
        elif it.iteration == WARMUP + args.iterations:
            sync(device)
            stamps.append(time.perf_counter())
            profiler.stop()

    params = Params(size=args.size, scales=1, iterations=WARMUP + args.iterations, precision=args.precision)
    stylize(open_image(CONTENT), [open_image(STYLE)], params, device=device, callback=callback)
    wall = (stamps[1] - stamps[0]) / args.iterations
    events = profiler.key_averages()
    table = events.table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total", row_limit=args.rows)
    kernels = [e for e in events if e.device_type == DeviceType.CUDA]  # kernels and copies, not the ops that launch them
    busy = sum(e.self_device_time_total for e in kernels) / 1e6 / args.iterations if cuda else None
    summary = {"device": torch.cuda.get_device_name(device) if cuda else "cpu", "size": args.size,
               "precision": resolve_precision(args.precision, device), "compile": args.compile, "iterations": args.iterations,
               "wall_ms_per_iteration": round(1e3 * wall, 3),
               "device_busy_ms_per_iteration": None if busy is None else round(1e3 * busy, 3),
               "device_busy_share": None if busy is None else round(busy / wall, 3),
               "device_ms_by_kind": by_kind(kernels, args.iterations) if cuda else None}
    print(table)
    print(json.dumps(summary))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = f"profile-{args.size}px-{args.precision}" + ("-compiled" if args.compile else "")
        (args.out / f"{stem}.txt").write_text(table + "\n" + json.dumps(summary) + "\n")
        profiler.export_chrome_trace(str(args.out / f"{stem}.json"))


if __name__ == "__main__":
    main()
