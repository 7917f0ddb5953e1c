"""The engine's parameters, written once: name, type, default, bounds and help of each.

`Params` is the contract between the front ends and the engine. `atelier stylize` derives its
flags from it, the API its request model and OpenAPI schema (`shared.schemas`), and both pass
what they were given to `Params(...)`, whose checks are the only ones: the same value is refused
with the same words by either front end. Standard library only, so the API imports it without
loading torch, and the engine (which imports nothing else of the project) can use it.
"""
import hashlib
import json
import math
import types
from dataclasses import dataclass, field, fields, replace
from typing import Any, Union, get_args, get_origin

# torchvision's vgg19().features, named as in Simonyan & Zisserman / Gatys et al.
LAYER_NAMES: tuple[str, ...] = tuple(
    name
    for block, convs in enumerate((2, 2, 4, 4, 4), start=1)
    for name in (
        *(f"{kind}{block}_{i}" for i in range(1, convs + 1) for kind in ("conv", "relu")),
        f"pool{block}",
    )
)
POOLINGS = ("avg", "max")
OPTIMIZERS = ("lbfgs", "adam")
COLOR_MODES = ("none", "luminance", "histogram")
INITS = ("content", "noise", "image")  # image: the caller passes an init image (a local file)
PRECISIONS = ("auto", "fp32", "bf16")
MIN_SIDE = 16      # relu5_1 sits behind four 2x poolings
COARSEST = 128     # auto schedules start here (or at the output size, if smaller)
MAX_SCALES = 6
COARSE_ITERATIONS = 150  # default schedule, see `plan`
STAGE_RATIO = 3.5
FINE_ITERATIONS = 20


class ParamError(ValueError):
    """A parameter is out of range or of the wrong kind; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Spec:
    """How one parameter is described and checked."""

    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()           # allowed values (of each item, for a list)
    service_choices: tuple[str, ...] = ()   # fewer for service clients: those needing no local file
    service: bool = True                    # False: chosen by the operator or on the command line only


def param(default: Any, help: str, **spec: Any) -> Any:
    return field(default=default, metadata={"spec": Spec(help, **spec)})


@dataclass(frozen=True)
class Params:
    size: int = param(512, "longest side of the output, in pixels", low=32, high=8192)
    iterations: int | None = param(None, "optimiser iterations over all scales (auto: the engine's schedule)",
                                   low=1, high=100_000)
    scales: int | None = param(None, "coarse-to-fine scales, 1 for a single scale (auto: from ~128 px, doubling)",
                               low=1, high=MAX_SCALES)
    style_weights: tuple[float, ...] | None = param(None, "blend of the style images, one weight each (auto: equal)",
                                                    low=0, high=1e9)
    content_weight: float = param(1.0, "weight of the content loss", low=0, high=1e9)
    style_weight: float = param(8.4, "weight of the style loss, each layer's loss counted from 1 at the content "
                                     "image and divided by how far the content starts from the style",
                                low=0, high=1e9)
    tv_weight: float = param(10.0, "weight of total variation (the mean gradient magnitude per output pixel), "
                                   "which clears speckle from flat regions", low=0, high=1e9)
    style_scale: float = param(1.0, "size of the style features relative to the output", low=0.1, high=4.0)
    init: str = param("content", "starting image: the content, noise, or (command line only) an image file",
                      choices=INITS, service_choices=("content", "noise"))
    seed: int = param(0, "random seed", low=0, high=2**63 - 1)
    optimizer: str = param("lbfgs", "optimiser", choices=OPTIMIZERS)
    learning_rate: float = param(0.02, "Adam's step size (images in [0, 1])", low=1e-6, high=10.0)
    pooling: str = param("max", "pooling in the network", choices=POOLINGS)
    preserve_color: str = param("none", "keep the content's colours: on luminance only, or by matching the "
                                        "style's colour histogram", choices=COLOR_MODES)
    weights: str = param("caffe", "VGG-19 weights: caffe, torchvision or a state-dict file", service=False)
    precision: str = param("auto", "network precision (auto: bf16 where the device multiplies it natively, else fp32)", choices=PRECISIONS,
                           service=False)
    content_layers: tuple[str, ...] = param(("relu4_2",), "layers whose features the content loss matches",
                                            choices=LAYER_NAMES)
    style_layers: tuple[str, ...] = param(("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"),
                                          "layers whose Gram matrices the style loss matches", choices=LAYER_NAMES)
    style_layer_weights: tuple[float, ...] | None = param(None, "one weight per style layer (auto: equal)",
                                                          low=0, high=1e9)

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) is not None or not optional(f):
                _check(f.name, getattr(self, f.name), kind(f), spec(f))
        if self.style_layer_weights is not None and len(self.style_layer_weights) != len(self.style_layers):
            raise ParamError("style_layer_weights", f"needs {len(self.style_layers)} values, one per layer, "
                                                    f"not {len(self.style_layer_weights)}")
        if self.content_weight == 0 and self.style_weight == 0:
            raise ParamError("style_weight", "content_weight and style_weight cannot both be 0")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (lists for tuples); `from_dict` reverses it."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Params":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def spec(f: Any) -> Spec:
    return f.metadata["spec"]


def kind(f: Any) -> str:
    """`int`, `float`, `str`, `names` (a list of choices) or `numbers` (a list of weights)."""
    types_ = [t for t in get_args(f.type) if t is not type(None)] if _is_optional(f.type) else [f.type]
    (base,) = types_
    if get_origin(base) is tuple:
        return "names" if get_args(base)[0] is str else "numbers"
    return base.__name__


def optional(f: Any) -> bool:
    return _is_optional(f.type)


def _is_optional(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType) and type(None) in get_args(annotation)


def _check(name: str, value: Any, kind_: str, s: Spec) -> None:
    if kind_ == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamError(name, f"must be an integer, not {value!r}")
        if not s.low <= value <= s.high:
            raise ParamError(name, f"must be between {s.low} and {s.high}, not {value}")
    elif kind_ == "float":
        if not _finite(value):
            raise ParamError(name, f"must be a finite number, not {value!r}")
        if not s.low <= value <= s.high:
            raise ParamError(name, f"must be between {s.low:g} and {s.high:g}, not {value:g}")
    elif kind_ == "str" and s.choices:
        if value not in s.choices:
            raise ParamError(name, f"must be one of {', '.join(s.choices)}, not {value!r}")
    elif kind_ == "str":
        if not isinstance(value, str) or not value:
            raise ParamError(name, "must be a non-empty text")
    elif kind_ == "names":
        if not isinstance(value, tuple) or not value or any(v not in s.choices for v in value):
            raise ParamError(name, f"must be a non-empty list of VGG-19 layers, e.g. {s.choices[1]}")
    elif not isinstance(value, tuple) or not value or any(not _finite(v) or not s.low <= v <= s.high for v in value):
        # bounded: weights are normalised by their sum, which overflows to infinity and zeroes them
        raise ParamError(name, f"must be a list of numbers from {s.low:g} to {s.high:g}")
    elif sum(value) <= 0:
        raise ParamError(name, "must not all be zero")


def _finite(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def resolve(params: Params, styles: int) -> Params:
    """Every automatic choice made explicit (the schedule's total and scales, equal blends), so what
    a job reports is what runs. Resolving never changes the plan: `plan(resolve(p)) == plan(p)`."""
    if params.style_weights is not None and len(params.style_weights) != styles:
        raise ParamError("style_weights", f"needs one weight per style image ({styles}), not {len(params.style_weights)}")
    stages = plan(params)
    return replace(params, iterations=sum(s.iterations for s in stages), scales=len(stages),
                   style_weights=params.style_weights or (1.0,) * styles,
                   style_layer_weights=params.style_layer_weights or (1.0,) * len(params.style_layers))


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
    proportions (exactly the default counts when it is their sum); with fewer iterations than
    scales, the finest scales are kept.
    """
    n = params.scales or auto_scales(params.size)
    sizes = sorted({max(MIN_SIDE, round(params.size / 2**k)) for k in range(n)})
    shares = [max(FINE_ITERATIONS, round(COARSE_ITERATIONS / STAGE_RATIO**k)) for k in range(len(sizes))]
    if params.iterations is None:
        return [Stage(size, count) for size, count in zip(sizes, shares)]
    total = params.iterations
    if total < len(sizes):
        sizes, shares = sizes[-total:], shares[-total:]
    return [Stage(size, count) for size, count in zip(sizes, _apportion(total, shares))]


def stage_dims(width: int, height: int, longest: int) -> tuple[int, int]:
    """(height, width) of a stage whose longest side is `longest` for an image of this size,
    never below MIN_SIDE: what the engine runs at, and what `shared.capacity` predicts for."""
    scale = longest / max(width, height)
    return max(MIN_SIDE, round(height * scale)), max(MIN_SIDE, round(width * scale))


def batch_key(params: Params, content_size: tuple[int, int]) -> str:
    """Jobs with equal keys can run as one batch (`worker.engine.loop`): the network sees the same
    from each, stage by stage (sizes and iterations), through the same layers, pooling, weights and
    precision, and each is optimised the same way. Their styles, blends, loss weights and learning
    rates may differ."""
    stages = plan(params)
    shape = [[stage_dims(*content_size, s.longest) for s in stages], [s.iterations for s in stages],
             params.content_layers, params.style_layers, params.pooling, params.weights, params.precision,
             params.optimizer, params.preserve_color]
    return hashlib.sha256(json.dumps(shape).encode()).hexdigest()[:32]


def _apportion(total: int, shares: list[int]) -> list[int]:
    """`total` split in proportion to `shares` (largest remainder, finest first on ties), at least 1 each."""
    exact = [total * s / sum(shares) for s in shares]
    counts = [max(1, math.floor(e)) for e in exact]
    while sum(counts) < total:
        counts[max(range(len(counts)), key=lambda i: (exact[i] - counts[i], i))] += 1
    while sum(counts) > total:  # stages raised to 1 are paid for by the one most over its share
        counts[max((i for i in range(len(counts)) if counts[i] > 1), key=lambda i: (counts[i] - exact[i], i))] -= 1
    return counts
