"""A job's peak device memory and run time, predicted before it runs: to refuse at submission
what fits on no worker's device, and to tell a queued job how long it will take once started.

The model is linear in what the engine does (`workload`): memory grows with the finest stage's
pixels (the activations the backward pass keeps) and the largest style pass's pixels (forward
only); time with the iterations, the megapixel-iterations of the optimisation and the style
passes. Its coefficients per device kind and precision (`cpu-bf16`, `cpu-fp32`, `cuda-bf16`:
a CPU's `auto` precision depends on its instruction set, and bf16 halves the activations kept)
live in `capacity_calibration.json` beside this file, written by `bench/calibrate.py` from
measured runs; an entry with `"measured": false` was estimated (see its `source`) and waits for a
calibration on that kind of device.
Standard library only: the API uses it without torch.
"""
from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Iterable, Sequence

from shared.params import MIN_SIDE, Params, plan, stage_dims

CALIBRATION = Path(__file__).with_name("capacity_calibration.json")
MB = 2**20
# the part of a device's memory a job may count on: CUDA's context, the allocator's fragmentation
# and cuDNN's workspaces take the rest (on a CPU, the OS and the worker's other processes)
USABLE_SHARE = 0.9


@dataclass(frozen=True)
class Workload:
    """What a job asks of a device, in the units the model is fitted in (megapixels: 2**20 pixels)."""

    iterations: int
    megapixel_iterations: float   # sum over stages of iterations x the stage's megapixels
    style_megapixels: float       # sum over stages and styles of the style passes' megapixels
    peak_megapixels: float        # the finest stage's
    peak_style_megapixels: float  # the largest style pass's, at the finest stage
    stages: int = 1


def workload(params: Params, content: tuple[int, int], styles: Sequence[tuple[int, int]]) -> Workload:
    """For `params` (resolved or not) on a content image and style images of these (width, height)."""
    stages = _stages(params, content, styles)
    return Workload(iterations=sum(s.iterations for s in stages),
                    megapixel_iterations=sum(s.iterations * s.megapixels for s in stages),
                    style_megapixels=sum(sum(s.style_megapixels) for s in stages),
                    peak_megapixels=stages[-1].megapixels, peak_style_megapixels=max(stages[-1].style_megapixels,
                                                                                     default=0.0),
                    stages=len(stages))


@dataclass(frozen=True)
class _Stage:
    iterations: int
    megapixels: float
    style_megapixels: tuple[float, ...]  # each style's pass at this stage


def _stages(params: Params, content: tuple[int, int], styles: Sequence[tuple[int, int]]) -> list[_Stage]:
    stages = []
    for stage in plan(params):
        style_longest = max(MIN_SIDE, round(stage.longest * params.style_scale))
        stages.append(_Stage(stage.iterations, _mp(stage_dims(*content, stage.longest)),
                             tuple(_mp(stage_dims(*size, style_longest)) for size in styles)))
    return stages


def _mp(dims: tuple[int, int]) -> float:
    return dims[0] * dims[1] / MB


@dataclass(frozen=True)
class Model:
    """One device kind's coefficients, in one precision."""

    measured: bool                  # fitted to runs on this kind of device; False: estimated
    source: str                     # how: the command, the device, or the estimate's reasoning
    base_mb: float                  # the network, the runtime (a CPU process's whole footprint)
    mb_per_megapixel: float         # of the finest stage (activations kept for the backward pass)
    mb_per_style_megapixel: float   # of the largest style pass (forward only)
    overhead_seconds: float         # per job, warm: the quality report, stage set-ups
    seconds_per_iteration: float    # per iteration whatever its size (kernel launches, the optimiser)
    seconds_per_megapixel_iteration: float
    seconds_per_style_megapixel: float
    # each stage's own set-up beyond its style passes: on CUDA its eager iterations and the capture
    # of its graph (an H100's default 512 px job, three stages, ran 1.8 times a fit without it); 0
    # in an entry fitted to one-stage runs only
    seconds_per_stage: float = 0.0

    def memory_mb(self, w: Workload) -> float:
        return self.base_mb + self.mb_per_megapixel * w.peak_megapixels \
            + self.mb_per_style_megapixel * w.peak_style_megapixels

    def seconds(self, w: Workload) -> float:
        return self.overhead_seconds + self.seconds_per_iteration * w.iterations \
            + self.seconds_per_megapixel_iteration * w.megapixel_iterations \
            + self.seconds_per_style_megapixel * w.style_megapixels + self.seconds_per_stage * w.stages


def device_kind(device: str) -> str:
    """`cuda` for any CUDA device, else `cpu`."""
    return "cuda" if device.startswith("cuda") else "cpu"


def model_key(kind: str, precision: str) -> str:
    """The calibration's key for a device kind running jobs in a precision: `cuda-bf16`."""
    return f"{kind}-{precision}"


def models(path: Path | None = None) -> dict[str, Model]:
    """Calibration key (`model_key`) -> its model, from the calibration file (`CALIBRATION` unless given)."""
    return _read(path or CALIBRATION)


def model(kind: str, precision: str) -> Model:
    """The model of `kind` in `precision`. A pair never calibrated (a GPU without bf16 runs fp32)
    borrows the kind's other precision, marked estimated; borrowed for fp32 from bf16, its memory
    per megapixel doubles, an upper bound (the activations kept take twice the bytes, the Grams
    and losses are fp32 in both), so that a job it cannot hold is refused, not run out of memory."""
    entries = models()
    if (exact := entries.get(model_key(kind, precision))) is not None:
        return exact
    key, borrowed = next((key, m) for key, m in sorted(entries.items()) if key.startswith(f"{kind}-"))
    scale = 2.0 if precision == "fp32" and key == model_key(kind, "bf16") else 1.0
    return replace(borrowed, measured=False, source=f"estimated from {key}: {borrowed.source}",
                   mb_per_megapixel=scale * borrowed.mb_per_megapixel,
                   mb_per_style_megapixel=scale * borrowed.mb_per_style_megapixel)


@functools.cache
def _read(path: Path) -> dict[str, Model]:
    names = {f.name for f in fields(Model)}
    return {kind: Model(**{k: v for k, v in entry.items() if k in names})
            for kind, entry in json.loads(path.read_text()).items()}


def write(path: Path, entries: dict[str, Model], extra: dict[str, dict] | None = None) -> None:
    """The calibration file: each kind's coefficients, plus what `extra` adds per kind (the runs
    they were fitted to)."""
    extra = extra or {}
    rounded = {k: {f: round(v, 6) if isinstance(v, float) else v for f, v in asdict(m).items()} for k, m in entries.items()}
    path.write_text(json.dumps({k: rounded[k] | extra.get(k, {}) for k in sorted(entries)}, indent=2) + "\n")


@dataclass(frozen=True)
class Timeline:
    """A job's time by the model, iteration by iteration: each stage's set-up and style passes at its start,
    then its iterations (a fixed cost each and their pixels'), then the job's end (the quality
    report). Its shape, not its level, is what a running job's ETA goes by (`worker.progress`):
    a coarse stage's iterations are cheaper than a fine one's, so a rate measured on the first
    would promise the rest too soon."""

    stages: tuple[tuple[int, float, float], ...]  # per stage: iterations, seconds per iteration, set-up seconds
    end: float

    def through(self, done: int) -> float:
        """The model's seconds from the start through `done` iterations."""
        seconds = 0.0
        for iterations, each, setup in self.stages:
            if done <= 0:
                break
            seconds += setup + each * min(done, iterations)
            done -= iterations
        return seconds

    def left(self, done: int) -> float:
        """The model's seconds after `done` iterations to the end."""
        return self.through(sum(iterations for iterations, _, _ in self.stages)) - self.through(done) + self.end


def timeline(params: Params, content: tuple[int, int], styles: Sequence[tuple[int, int]], kind: str,
             precision: str) -> Timeline:
    """The `Timeline` of a job of `params` on these images, on a device of `kind` in `precision`."""
    m = model(kind, precision)
    return Timeline(tuple((s.iterations, m.seconds_per_iteration + m.seconds_per_megapixel_iteration * s.megapixels,
                           m.seconds_per_stage + m.seconds_per_style_megapixel * sum(s.style_megapixels))
                          for s in _stages(params, content, styles)), m.overhead_seconds)


@dataclass(frozen=True)
class Prediction:
    device: str          # the device kind it is for
    seconds: float       # run time once started, warm (the network loaded)
    memory_mb: float     # peak device memory
    measured: bool       # from a model fitted on that kind of device (else estimated)

    def to_dict(self) -> dict[str, object]:
        return {"device": self.device, "seconds": round(self.seconds, 1), "memory_mb": round(self.memory_mb),
                "measured": self.measured}


def predict(w: Workload, kind: str, precision: str, pace: float = 1.0) -> Prediction:
    """On a device of `kind` running `precision`, whose jobs take `pace` times the model's time
    (the same kind of device differs between machines: a CPU's cores, a GPU's clocks and host)."""
    m = model(kind, precision)
    return Prediction(kind, m.seconds(w) * pace, m.memory_mb(w), m.measured)


def pace(runs: Iterable[tuple[float, float]]) -> float:
    """A worker's pace from its lone jobs' (run seconds, the model's seconds): the median of their
    ratios, each weighted by the model's seconds. Median, so that one slow job (another process on
    the device) does not set it; weighted, so that the long jobs that make up a queue's time do,
    not a run of thumbnails, whose fixed costs the model fits least well (on one CPU a default 32 px
    job ran 3.4 times an older fit's prediction, a 192 px one half of it: BENCHMARKS.md, *Capacity
    model calibration*)."""
    ranked = sorted((seconds / predicted, predicted) for seconds, predicted in runs)
    half, weight = sum(predicted for _, predicted in ranked) / 2, 0.0
    for ratio, predicted in ranked:
        weight += predicted
        if weight >= half:
            return ratio
    raise ValueError("no runs to tell a pace from")


@dataclass(frozen=True)
class Device:
    """A live worker's device, as it reports it (`shared.devices`)."""

    kind: str
    memory_bytes: int | None  # None: not known (no limit assumed)
    precision: str            # what its jobs run in (`precision auto` there)
    pace: float = 1.0         # its jobs' run time over the model's (`worker.presence.paced`); 1 until it ran one

    @classmethod
    def from_report(cls, report: dict[str, object]) -> "Device":
        """A worker's device report (`shared.devices`) as the model reads it. A report without a
        precision is from a worker older than the field, which ran bf16 on CUDA only."""
        kind = device_kind(str(report["device"]))
        precision = str(report.get("precision") or ("bf16" if kind == "cuda" else "fp32"))
        return cls(kind, report.get("memory_bytes"), precision, float(report.get("pace") or 1.0))


def too_big(w: Workload, devices: Iterable[Device]) -> str | None:
    """Why the job fits on none of `devices` (each judged by its own kind's model), or None if it
    fits on one of them, or if there are none to judge by."""
    devices = list(devices)
    if not devices or any(d.memory_bytes is None for d in devices):
        return None
    needs = {d: predict(w, d.kind, d.precision).memory_mb for d in devices}
    if any(needs[d] <= USABLE_SHARE * d.memory_bytes / MB for d in devices):
        return None
    largest = max(devices, key=lambda d: d.memory_bytes)
    return (f"needs ~{needs[largest] / 1024:.1f} GiB of device memory, the largest worker device has "
            f"{largest.memory_bytes / 2**30:.1f} GiB ({USABLE_SHARE:.0%} of it usable by a job); "
            f"try a smaller size or style_scale")


def batch_size(w: Workload, kind: str, precision: str, free_bytes: int | None, cap: int) -> int:
    """How many jobs like `w` to run as one batch on a device with `free_bytes` free (the network
    already loaded; None: unknown): as many as that holds, each taking its memory above the
    model's base, within `cap`, at least 1."""
    m = model(kind, precision)
    each = m.memory_mb(w) - m.base_mb
    if free_bytes is None or each <= 0:
        return max(1, cap)
    return max(1, min(cap, int(USABLE_SHARE * free_bytes / MB // each)))


def limiting_field(w: Workload, kind: str, precision: str) -> str:
    """The parameter most of the predicted memory comes from: `size`, or `style_scale`."""
    m = model(kind, precision)
    by_style = m.mb_per_style_megapixel * w.peak_style_megapixels
    return "style_scale" if by_style > m.mb_per_megapixel * w.peak_megapixels else "size"


def starts_in(busy: Sequence[float], workers: int, ahead: float) -> float:
    """Seconds until a queued job starts: `workers` workers, the busy ones free in `busy` seconds
    (one figure per worker), and `ahead` seconds of predicted work queued before it. Workers take
    the oldest job whenever they are free, so the work ahead fills the earliest free time first:
    the job starts at the level where the idle time left before it equals `ahead` (water-filling;
    exact when the jobs ahead divide evenly, an estimate otherwise)."""
    if workers < 1:
        raise ValueError("no worker: nothing starts")
    busy = sorted(busy)[:workers]  # more busy than live: some stopped, their jobs will be taken again
    free = [0.0] * (workers - len(busy)) + busy
    level, filled = 0.0, 0.0
    for count, at in enumerate(free, 1):
        filled += at
        level = (ahead + filled) / count
        if count < workers and level <= free[count]:
            break
    return level
