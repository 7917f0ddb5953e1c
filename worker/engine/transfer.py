"""One style-transfer job as the loop (`loop`) runs it: its inputs and resolved parameters, the
loss targets of each stage, and what it hands its callback, its checkpoint and its result.

The callback is where a caller hooks progress, snapshots, checkpoints and cancellation: it
receives an `Iterate` after every iteration and returns True to stop the run cleanly.
"""
from __future__ import annotations

import hashlib
import re
import resource
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import torch
from PIL import Image

from shared.params import MIN_SIDE, ParamError, Params, Stage, plan, resolve, stage_dims

from . import color
from .images import fit_longest_side, to_image, to_tensor
from .losses import ContentLoss, StyleLoss, TVLoss, gram
from .quality import STYLE_LAYERS, YARDSTICK, quality_report
from .vgg import load_network

# 3: L-BFGS keeps its previous point and loss (the safeguard); 2: the optimiser state is
# `optimizers`' (1 held torch's); an older checkpoint's image still resumes, with a new optimiser
CHECKPOINT_VERSION = 3
# L-BFGS history is 2 x HISTORY image-sized tensors; beyond this it is cheaper to rebuild.
MAX_CHECKPOINT_OPTIMIZER_BYTES = 64 * 2**20
STYLE_CACHE_SIZE = 32  # Gram targets are small (at most 512x512 floats per layer)
_STYLE_CACHE: OrderedDict[tuple, dict[str, torch.Tensor]] = OrderedDict()


@dataclass
class Iterate:
    """What the callback sees after every iteration. The losses, images and checkpoints are read
    from the device on demand: asking for them waits for the device to catch up."""

    scale: int            # 0-based index of the current stage
    scales: int
    width: int
    height: int
    iteration: int        # 1-based, counted over all stages
    total: int
    elapsed: float        # since the run started, its set-up included
    iterations_per_second: float  # since the run's first iteration ended: its set-up is not its pace
    rate_from: int        # that first iteration
    _losses: Callable[[], dict[str, float]] = field(repr=False)
    _image: Callable[[], Image.Image] = field(repr=False)
    _checkpoint: Callable[[], dict] = field(repr=False)

    @property
    def losses(self) -> dict[str, float]:
        return self._losses()

    def image(self) -> Image.Image:
        return self._image()

    def checkpoint(self) -> dict:
        return self._checkpoint()


@dataclass
class Result:
    image: Image.Image
    iterations: int
    total: int
    stopped: bool         # the callback asked to stop before the end
    seconds: float
    device: str
    losses: dict[str, float]
    quality: dict[str, float] | None
    peak_memory_mb: float
    checkpoint: dict
    params: Params        # what ran: the given parameters with every automatic choice resolved


Callback = Callable[[Iterate], bool | None]  # True: stop; raising FloatingPointError: the loss it read diverged


class DeviceError(ValueError):
    """The requested device does not exist on this machine."""


def resolve_device(device: str = "auto") -> str:
    """`auto` is CUDA when present, else the CPU; anything else must exist here."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if not re.fullmatch(r"cuda(:\d+)?", device):
        raise DeviceError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    index = int(device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise DeviceError(f"device {device!r} was requested but this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return device


def resolve_precision(precision: str, device: str) -> str:
    """What a job asking for `precision` runs its network passes in on `device`: `bf16` (autocast;
    the Grams accumulate in fp32, losses and optimiser are fp32) or `fp32`. `auto` is bf16 where
    the hardware multiplies bf16 natively: CUDA GPUs from Ampere on, and CPUs with AVX512-BF16
    (AMX CPUs have it too), where a default job ran 1.4-1.7x faster than in fp32 at 64 to 512 px
    (BENCHMARKS.md). Older GPUs and other CPUs would emulate it: they stay fp32."""
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    else:
        native = torch.cpu._is_avx512_bf16_supported()
    return "bf16" if native else "fp32"


class Transfer:
    """One style-transfer run: inputs, parameters, and the state that a checkpoint captures."""

    def __init__(self, content: Image.Image, styles: Sequence[Image.Image], params: Params,
                 init_image: Image.Image | None = None, device: str = "auto") -> None:
        if not styles:
            raise ValueError("at least one style image is needed")
        if (params.init == "image") != (init_image is not None):
            raise ParamError("init", "init 'image' and an init image go together")
        self.device = resolve_device(device)
        # explicit blends, schedule and precision, as the result reports them
        params = replace(resolve(params, len(styles)), precision=resolve_precision(params.precision, self.device))
        self.content, self.styles, self.params, self.init_image = content, list(styles), params, init_image
        if self.device.startswith("cuda"):
            # TF32 for the fp32 path's convolutions; matrix products (Grams, the optimiser's) stay
            # full fp32: a 10-bit mantissa in L-BFGS's inner products would bend its steps
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cuda.matmul.allow_tf32 = False
        self.net = load_network(params.weights, params.pooling, self.device)  # the targets' passes, in fp32
        self.bf16 = params.precision == "bf16"
        # the optimisation's passes: in bf16 on the fast path, with the weights held in bf16
        self.loop_net = (load_network(params.weights, params.pooling, self.device, torch.bfloat16) if self.bf16
                         else self.net)
        self.stages = plan(params)
        self.total = sum(s.iterations for s in self.stages)
        self.style_blend = [w / sum(params.style_weights) for w in params.style_weights]
        self.layer_weights = [w / sum(params.style_layer_weights) for w in params.style_layer_weights]

    # ---- per-stage setup ------------------------------------------------------------------

    def _targets(self, stage: Stage) -> tuple[torch.Tensor, list[ContentLoss], list[StyleLoss]]:
        p = self.params
        h, w = stage_dims(*self.content.size, stage.longest)
        content = to_tensor(self.content.resize((w, h), Image.LANCZOS), self.device)
        grams = self._style_grams(stage, content)
        if p.preserve_color == "luminance":
            content = color.luminance(content)
        with torch.no_grad():
            content_features = self.net(content, frozenset(p.content_layers + p.style_layers))
        content_losses = [ContentLoss(content_features[layer]) for layer in p.content_layers]
        style_losses = [StyleLoss(grams[layer], gram(content_features[layer])) for layer in p.style_layers]
        return content, content_losses, style_losses

    def _style_balance(self, style_losses: list[StyleLoss]) -> float:
        """The style weight's factor, from how far the content image starts from the style at the
        coarsest stage: d_l² = ‖G(C) − A‖² / ‖A‖² per style layer, averaged with the layer weights.

        How much: the pull towards the style, in units of ‖A‖², is 1 / mean(d²), so a painting far
        from the photograph gets less of it and the photograph stays recognisable. Where: each
        layer's loss starts at 1 from the content (`StyleLoss` divides by d_l²), which shares that
        pull out in proportion to 1 / d_l², so the layers furthest from the photograph (relu5_1 of a
        painting unlike it) cannot dominate. The factor below makes the two hold together. The
        coarsest stage (`style_losses` are its own) decides the composition and shows the
        differences most (relu5_1 of The Scream: d² 4.08 from the Golden Gate, 1.45 from Tübingen at
        128 px; 3.0 and 2.8 at 512 px); its value holds for every stage, so that all of them
        optimise the same balance, a resumed run too.
        """
        starts = [(loss.norm / loss.target.pow(2).sum()).item() for loss in style_losses]
        mean = sum(w * d for w, d in zip(self.layer_weights, starts))
        share = sum(w / d for w, d in zip(self.layer_weights, starts))
        return 1 / (mean * share)

    def _style_grams(self, stage: Stage, content: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Blended Gram targets per style layer, cached per process: a worker that sees the
        same style again (the common case for a service) skips the style passes."""
        p = self.params
        style_longest = max(MIN_SIDE, round(stage.longest * p.style_scale))
        key = (tuple(_digest(s) for s in self.styles), tuple(self.style_blend), style_longest, p.weights,
               p.pooling, p.style_layers, p.preserve_color, self.device,
               None if p.preserve_color == "none" else _digest(self.content))
        if key in _STYLE_CACHE:
            _STYLE_CACHE.move_to_end(key)
            return _STYLE_CACHE[key]
        styles = [to_tensor(fit_longest_side(s, style_longest, MIN_SIDE), self.device) for s in self.styles]
        if p.preserve_color == "histogram":
            styles = [color.match_histogram(s, content) for s in styles]
        elif p.preserve_color == "luminance":
            luma = color.luminance(content)
            styles = [color.match_luminance(color.luminance(s), luma) for s in styles]
        grams: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for style, weight in zip(styles, self.style_blend):
                features = self.net(style, frozenset(p.style_layers))
                for layer in p.style_layers:
                    grams[layer] = grams.get(layer, 0) + weight * gram(features[layer])
        _STYLE_CACHE[key] = grams
        if len(_STYLE_CACHE) > STYLE_CACHE_SIZE:
            _STYLE_CACHE.popitem(last=False)
        return grams

    def _report_targets(self, stage: Stage, output: Image.Image) -> dict[str, torch.Tensor] | None:
        """The last stage's Gram targets when they are the quality report's own (same network, the
        styles as given, at the output's size), so the report skips the style passes; else None."""
        p = self.params
        same = ((p.weights, p.pooling) == YARDSTICK and p.preserve_color == "none" and set(STYLE_LAYERS) <= set(p.style_layers)
                and max(MIN_SIDE, round(stage.longest * p.style_scale)) == max(output.size))
        if not same:
            return None
        grams = self._style_grams(stage, content=None)  # cached by the stage; colour modes, which need it, are excluded
        return {n: grams[n] for n in STYLE_LAYERS}

    def _initial_image(self, content: torch.Tensor) -> torch.Tensor:
        p = self.params
        if p.init == "image":
            image = to_tensor(self.init_image.resize((content.shape[-1], content.shape[-2]), Image.LANCZOS), self.device)
            return color.luminance(image) if p.preserve_color == "luminance" else image
        if p.init == "noise":
            generator = torch.Generator().manual_seed(p.seed)
            return torch.rand(content.shape, generator=generator).to(self.device)
        return content.clone()

    def _tv(self, stage: Stage) -> TVLoss:
        """Total variation at `stage`, measured per pixel of the output."""
        return TVLoss(stage.longest / self.stages[-1].longest)

    def _output(self, image: torch.Tensor, stage: Stage) -> Image.Image:
        if self.params.preserve_color == "luminance":
            h, w = image.shape[-2:]
            content = to_tensor(self.content.resize((w, h), Image.LANCZOS), self.device)
            image = color.recombine(image, content)
        return to_image(image)

    def _result(self, stage: int, done: int, image: torch.Tensor, optimizer: dict | None, stopped: bool,
                losses: dict[str, float], start: float) -> Result:
        """The run's outcome: the image, a checkpoint (with the optimiser's state if stopped), and,
        if it ran to the end, the quality report."""
        final = self._checkpoint(stage, done, image, optimizer)
        output = self._output(image, self.stages[stage])
        quality = None if stopped else quality_report(output, self.content, self.styles, self.style_blend, self.device,
                                                      self._report_targets(self.stages[stage], output))
        return Result(
            image=output, iterations=done, total=self.total, stopped=stopped,
            seconds=time.perf_counter() - start, device=self.device, losses=losses, quality=quality,
            peak_memory_mb=self._peak_memory_mb(), checkpoint=final, params=self.params,
        )

    def _checkpoint(self, stage: int, iteration: int, image: torch.Tensor, optimizer: dict | None) -> dict:
        """Everything `stylize(checkpoint=...)` needs, with the optimiser's `state` of this job;
        plain tensors on the CPU, ready for torch.save."""
        ckpt = {"version": CHECKPOINT_VERSION, "stage": stage, "iteration": iteration,
                "image": image.detach().cpu().clone(), "params": self.params.to_dict()}
        if optimizer is not None:
            state = _to_cpu(optimizer)
            if _nbytes(state) <= MAX_CHECKPOINT_OPTIMIZER_BYTES:
                ckpt["optimizer"] = state
        return ckpt

    def _peak_memory_mb(self) -> float:
        if self.device.startswith("cuda"):
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _digest(image: Image.Image) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest() + f"{image.size}"


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def _nbytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 0

