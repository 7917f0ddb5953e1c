"""Engine parameters: one frozen dataclass, validated in one place, and the coarse-to-fine plan."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

from .vgg import LAYER_NAMES, POOLINGS

OPTIMIZERS = ("lbfgs", "adam")
COLOR_MODES = ("none", "luminance", "histogram")
INITS = ("content", "noise", "image")  # image: the caller passes init_image
PRECISIONS = ("auto", "fp32", "bf16")
MIN_SIDE = 16      # relu5_1 sits behind four 2x poolings
COARSEST = 128     # auto schedules start here (or at the output size, if smaller)
MAX_SCALES = 6
COARSE_ITERATIONS = 150  # default schedule, see `plan`
STAGE_RATIO = 3.5
FINE_ITERATIONS = 10


class ParamError(ValueError):
    """A parameter is out of range or of the wrong kind; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Params:
    size: int = 512
    iterations: int | None = None          # total over all scales; None: the engine's choice
    scales: int | None = None              # None: auto (coarsest ~128 px, doubling)
    style_weights: tuple[float, ...] | None = None  # blend of several styles; None: equal
    content_weight: float = 1.0
    style_weight: float = 5.0
    tv_weight: float = 0.0
    style_scale: float = 1.0
    init: str = "content"                  # content | noise | image (an init_image is given)
    seed: int = 0
    optimizer: str = "lbfgs"
    learning_rate: float = 0.02            # Adam's step size, images in [0, 1]
    pooling: str = "max"
    preserve_color: str = "none"
    weights: str = "caffe"
    precision: str = "auto"                # auto: bf16 network passes where the device has fast bf16
    content_layers: tuple[str, ...] = ("relu4_2",)
    style_layers: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    style_layer_weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        _int(self, "size", 32, 8192)
        if self.iterations is not None:
            _int(self, "iterations", 1, 100_000)
        if self.scales is not None:
            _int(self, "scales", 1, MAX_SCALES)
        _int(self, "seed", 0, 2**63 - 1)
        for name in ("content_weight", "style_weight", "tv_weight"):
            _number(self, name, 0, 1e9)
        _number(self, "style_scale", 0.1, 4.0)
        _number(self, "learning_rate", 1e-6, 10.0)
        _choice(self, "optimizer", OPTIMIZERS)
        _choice(self, "pooling", POOLINGS)
        _choice(self, "preserve_color", COLOR_MODES)
        _choice(self, "precision", PRECISIONS)
        _choice(self, "init", INITS)
        if not isinstance(self.weights, str) or not self.weights:
            raise ParamError("weights", "must be 'caffe', 'torchvision' or a file path")
        for name in ("content_layers", "style_layers"):
            layers = getattr(self, name)
            if not layers or any(layer not in LAYER_NAMES for layer in layers):
                raise ParamError(name, f"must be a non-empty list of VGG-19 layers, e.g. {LAYER_NAMES[1]}")
        _weights(self, "style_weights", None)
        _weights(self, "style_layer_weights", len(self.style_layers))
        if self.content_weight == 0 and self.style_weight == 0:
            raise ParamError("style_weight", "content_weight and style_weight cannot both be 0")

    def to_dict(self) -> dict:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}


def _int(p: Params, name: str, low: int, high: int) -> None:
    value = getattr(p, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParamError(name, f"must be an integer, not {value!r}")
    if not low <= value <= high:
        raise ParamError(name, f"must be between {low} and {high}, not {value}")


def _number(p: Params, name: str, low: float, high: float) -> None:
    value = getattr(p, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ParamError(name, f"must be a finite number, not {value!r}")
    if not low <= value <= high:
        raise ParamError(name, f"must be between {low:g} and {high:g}, not {value:g}")


def _choice(p: Params, name: str, allowed: tuple[str, ...]) -> None:
    if getattr(p, name) not in allowed:
        raise ParamError(name, f"must be one of {', '.join(allowed)}, not {getattr(p, name)!r}")


def _weights(p: Params, name: str, length: int | None) -> None:
    values = getattr(p, name)
    if values is None:
        return
    if not isinstance(values, tuple) or not values or any(
        isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 for v in values
    ):
        raise ParamError(name, "must be a list of non-negative finite numbers")
    if sum(values) <= 0:
        raise ParamError(name, "must not all be zero")
    if length is not None and len(values) != length:
        raise ParamError(name, f"needs {length} values, one per layer, not {len(values)}")


@dataclass(frozen=True)
class Stage:
    """One rung of the coarse-to-fine ladder."""

    longest: int
    iterations: int


def auto_scales(size: int) -> int:
    """Enough scales that the coarsest is between COARSEST and 2*COARSEST pixels."""
    return max(1, min(MAX_SCALES, 1 + int(math.log2(size / COARSEST)))) if size >= COARSEST else 1


def plan(params: Params) -> list[Stage]:
    """The coarse-to-fine ladder: sizes double up to the output size.

    By default the coarsest stage runs COARSE_ITERATIONS (it converges there for a fraction of
    the cost), and each finer stage 1/STAGE_RATIO as many (at least FINE_ITERATIONS): at 4x
    the cost per iteration they only add detail. A requested total is split in the same
    proportions; with fewer iterations than scales, the finest scales are kept.
    """
    n = params.scales or auto_scales(params.size)
    sizes = sorted({max(MIN_SIDE, round(params.size / 2**k)) for k in range(n)})
    shares = [max(FINE_ITERATIONS, round(COARSE_ITERATIONS / STAGE_RATIO**k)) for k in range(len(sizes))]
    if params.iterations is None:
        return [Stage(size, count) for size, count in zip(sizes, shares)]
    total = params.iterations
    if total < len(sizes):
        sizes, shares = sizes[-total:], shares[-total:]
    counts = [1 + math.floor((total - len(sizes)) * s / sum(shares)) for s in shares]
    for i in range(total - sum(counts)):  # hand out the rounding remainder, finest first
        counts[-1 - i % len(counts)] += 1
    return [Stage(size, count) for size, count in zip(sizes, counts)]


def default_iterations(size: int) -> int:
    """The engine's choice of total iterations when the caller gives none."""
    return sum(s.iterations for s in plan(Params(size=size)))
