"""Calibrate the memory and time model (`shared.capacity`) on this machine's device.

    .venv/bin/python bench/calibrate.py [--device cpu|cuda] [--precision auto|fp32|bf16]
                                        [--sizes 32 64 128 256 384 512] [--check 32 96 192] [--write]

Runs small jobs (Tübingen x The Starry Night, one scale) over a spread of sizes, iteration counts,
style counts and style scales, and two default jobs (several stages), each in a fresh process so
its peak memory is its own (CUDA: the allocator's peak; CPU: the process's peak resident set during
the job, the network and runtime included, the weights file's one-off loading peak not), timed
warm (the network loaded first, as in a worker). Fits the model's coefficients by non-negative
least squares and prints the runs, the fit and its worst errors; `--write` stores the fit as the
entry of this device kind in the precision the jobs ran in (`cpu-bf16`: `--precision auto` is
what a worker here runs) in shared/capacity_calibration.json, keeping the other entries.
`--check` then runs default jobs (the service's stages and iterations) and sets each one's time
against the fit. Prints, last, one JSON line with every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared import capacity  # noqa: E402
from shared.params import Params  # noqa: E402

CONTENT = ROOT / "samples" / "tubingen.jpg"
STYLES = (ROOT / "samples" / "starry_night.jpg", ROOT / "samples" / "the_scream.jpg")


@dataclass(frozen=True)
class Sample:
    size: int
    iterations: int | None  # None: a default job (the service's stages and iterations), to check the fit by
    styles: int = 1
    style_scale: float = 1.0
    precision: str = "auto"

    def params(self) -> Params:
        if self.iterations is None:
            return Params(size=self.size, precision=self.precision)
        return Params(size=self.size, iterations=self.iterations, scales=1, style_scale=self.style_scale,
                      precision=self.precision)


# two iteration counts per size, far enough apart that a GPU's per-iteration cost stands out of
# its per-job cost (at 4 and 12 it did not on an H100), and past the point where a stage is
# replayed as a CUDA graph; a CPU's iterations are slow enough at a few
ITERATIONS = {"cpu": (4, 12), "cuda": (20, 80)}


def samples(sizes: list[int], device: str, precision: str) -> list[Sample]:
    """Every size at two iteration counts (per-iteration cost apart from per-job cost); at the
    second size, two styles and a doubled style scale (the style passes' share); and default jobs
    at the second and third sizes, whose several stages part each stage's set-up from the job's."""
    few, many = ITERATIONS[device.split(":")[0]]
    runs = [Sample(size, iterations, precision=precision) for size in sizes for iterations in (few, many)]
    middle = sizes[min(1, len(sizes) - 1)]
    return runs + [Sample(middle, few, styles=2, precision=precision),
                   Sample(middle, few, style_scale=2.0, precision=precision)] \
        + [Sample(size, None, precision=precision) for size in dict.fromkeys(sizes[1:3])]


def run_sample(sample: Sample, device: str) -> dict:
    """One sample in this process (called in a fresh one): warm up, then the timed run."""
    from shared.images import open_image
    from worker.engine import resolve_precision, stylize

    content, styles = open_image(CONTENT), [open_image(p) for p in STYLES[:sample.styles]]
    stylize(content, styles, Params(size=32, iterations=1, scales=1), device=device)  # loads the network
    if device == "cpu":  # the peak from here on (the weights file's loading peak is once per process)
        Path("/proc/self/clear_refs").write_text("5")
    result = stylize(content, styles, sample.params(), device=device)
    memory_mb = result.peak_memory_mb if device != "cpu" else _resident_peak_mb()
    return {"seconds": result.seconds, "memory_mb": memory_mb, "device": result.device,
            "precision": resolve_precision(sample.precision, result.device),
            "content": list(content.size), "styles": [list(s.size) for s in styles]}


def _resident_peak_mb() -> float:
    """VmHWM: the peak resident set since it was last reset (clear_refs), in MiB."""
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def measure(sample: Sample, device: str) -> dict:
    command = [sys.executable, __file__, "--device", device, "--sample", json.dumps(asdict(sample))]
    out = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])


def nonnegative_fit(rows: list[list[float]], targets: list[float]) -> list[float]:
    """Least squares with every coefficient >= 0: a negative one is pinned to 0 and the rest refitted."""
    import numpy as np

    a, b = np.array(rows, dtype=float), np.array(targets, dtype=float)
    free = list(range(a.shape[1]))
    while True:
        coefficients = np.zeros(a.shape[1])
        coefficients[free] = np.linalg.lstsq(a[:, free], b, rcond=None)[0]
        negative = [i for i in free if coefficients[i] < 0]
        if not negative:
            return coefficients.tolist()
        free.remove(min(negative, key=lambda i: coefficients[i]))


def fit(runs: list[tuple[capacity.Workload, dict]], source: str) -> capacity.Model:
    """Time by least squares: an ETA should be as often early as late. Memory by least squares,
    then raised by the most a run peaked above it: it decides what is refused and how many jobs
    share a device, where a job predicted short fails and one predicted long only waits. Raised,
    not scaled: what a multi-stage job holds beyond the line is a sum (on an H100, a stage that
    followed another peaked 133 to 199 MB above a one-stage run of its size)."""
    rows = [[1, w.peak_megapixels, w.peak_style_megapixels] for w, _ in runs]
    peaks = [m["memory_mb"] for _, m in runs]
    memory = nonnegative_fit(rows, peaks)
    memory[0] += max(0.0, max(peak - sum(c * x for c, x in zip(memory, row)) for row, peak in zip(rows, peaks)))
    seconds = nonnegative_fit([[1, w.iterations, w.megapixel_iterations, w.style_megapixels, w.stages] for w, _ in runs],
                              [m["seconds"] for _, m in runs])
    return capacity.Model(True, source, *memory, *seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                        help="the jobs' (default auto: what a worker here runs)")
    # the small sizes pin the per-iteration cost: without them a CPU's fit put it at 0, and predicted
    # a default 32 px job at a third of its time (BENCHMARKS.md, *Capacity model calibration*)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128, 256, 384, 512])
    parser.add_argument("--check", type=int, nargs="*", default=[], metavar="SIZE",
                        help="then run a default job at each size and set its time against the fit's prediction")
    parser.add_argument("--write", action="store_true", help="store the fit in shared/capacity_calibration.json")
    parser.add_argument("--sample", help=argparse.SUPPRESS)  # internal: run one sample in this process
    args = parser.parse_args()
    if args.sample:
        print(json.dumps(run_sample(Sample(**json.loads(args.sample)), args.device)))
        return

    load_before = os.getloadavg()
    runs, table = [], []
    for number, sample in enumerate(samples(args.sizes, args.device, args.precision), start=1):
        started = time.perf_counter()
        measured = measure(sample, args.device)
        work = capacity.workload(sample.params(), tuple(measured["content"]), [tuple(s) for s in measured["styles"]])
        runs.append((work, measured))
        table.append(asdict(sample) | {"seconds": round(measured["seconds"], 3), "memory_mb": round(measured["memory_mb"])})
        print(f"[{number}] {sample}: {measured['seconds']:.2f} s, {measured['memory_mb']:.0f} MB "
              f"({time.perf_counter() - started:.0f} s with start-up)", file=sys.stderr, flush=True)
    device, precision = runs[0][1]["device"], runs[0][1]["precision"]
    key = capacity.model_key(capacity.device_kind(device), precision)
    command = (f"bench/calibrate.py --device {args.device} --precision {args.precision} "
               f"--sizes {' '.join(map(str, args.sizes))}")
    model = fit(runs, f"measured: {command} on {_device_name(device)}")
    errors = [{"sample": row, "predicted_seconds": round(model.seconds(w), 3),
               "predicted_memory_mb": round(model.memory_mb(w))} for row, (w, _) in zip(table, runs)]
    worst_time = max(abs(model.seconds(w) / m["seconds"] - 1) for w, m in runs)
    worst_memory = max(abs(model.memory_mb(w) / m["memory_mb"] - 1) for w, m in runs)
    print(f"{key}: {asdict(model)}\nworst relative error: time {worst_time:.1%}, memory {worst_memory:.1%}",
          file=sys.stderr)
    checks = [check(Sample(size, None, precision=args.precision), args.device, model) for size in args.check]
    if args.write:
        entries = capacity.models(capacity.CALIBRATION) | {key: model}
        capacity.write(capacity.CALIBRATION, entries)
        print(f"wrote the {key} entry of {capacity.CALIBRATION.relative_to(ROOT)}", file=sys.stderr)
    print(json.dumps({"device": device, "precision": precision, "key": key, "name": _device_name(device),
                      "model": asdict(model), "runs": errors, "checks": checks,
                      "worst_relative_error": {"seconds": round(worst_time, 3), "memory": round(worst_memory, 3)},
                      "load_average_before": [round(x, 2) for x in load_before],
                      "load_average_after": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
                      "python": platform.python_version(), "command": command}))


def check(sample: Sample, device: str, model: capacity.Model) -> dict:
    """A default job's measured time against the fitted model's prediction and the stored entry's, and
    its peak memory against the fit's."""
    measured = measure(sample, device)
    work = capacity.workload(sample.params(), tuple(measured["content"]), [tuple(s) for s in measured["styles"]])
    stored = capacity.model(capacity.device_kind(measured["device"]), measured["precision"])
    row = {"size": sample.size, "iterations": work.iterations, "seconds": round(measured["seconds"], 2),
           "fit": round(model.seconds(work), 2), "stored": round(stored.seconds(work), 2),
           "memory_mb": round(measured["memory_mb"]), "fit_memory_mb": round(model.memory_mb(work))}
    print(f"default {sample.size} px job: {row['seconds']:.2f} s; the fit predicts {row['fit']:.2f} s "
          f"({measured['seconds'] / row['fit']:.2f}x), the stored entry {row['stored']:.2f} s "
          f"({measured['seconds'] / row['stored']:.2f}x); {row['memory_mb']} MB, the fit predicts "
          f"{row['fit_memory_mb']} MB", file=sys.stderr, flush=True)
    return row


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
             if line.startswith("model name")]
    return f"{names[0] if names else 'CPU'} ({os.cpu_count()} cores, {platform.machine()})"


if __name__ == "__main__":
    main()
