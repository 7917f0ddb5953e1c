"""Loss terms as small modules, each giving one value per image of a batch. Each is normalised so
that weights mean the same thing at every layer, image size, weight source and style: content by
the content's energy, style by how far the content image starts from the style."""
from __future__ import annotations

from typing import Sequence, TypeVar

import torch
from torch import nn

L = TypeVar("L", bound="PerImage")


def _per_image(values: torch.Tensor) -> torch.Tensor:
    """Sums over everything but the batch dimension."""
    return values.flatten(1).sum(1)


class _FlatGram(torch.autograd.Function):
    """F Fᵀ in fp32, with the symmetric backward (G' + G'ᵀ) F: one matmul where autograd would do two.

    The fast path's bf16 features are multiplied as they are, accumulating in fp32 (`_fp32_product`):
    an fp32 copy of them cost a pass over the activations, and its product ran on an H100's FMA
    units rather than its tensor cores (the relu1_1 Gram alone 0.36 ms of a 7.7 ms iteration at
    1024 px). The features being bf16 already, the Gram is the same numbers. The backward is then
    a bf16 product too, as the network's own are: it rounds (G' + G'ᵀ) to bf16, where the fp32
    product rounded its result to bf16 on the way into the network. Measured against fp64 on
    VGG's bf16 features at 256 px: 1.76e-3 relative error against 1.68e-3 with the start's
    gradient, 2.4e-3 against 1.7e-3 with a random symmetric one.

    The gradient comes back in the features' own layout ((Fᵀ S)ᵀ, S symmetric): the network's
    channels-last features, flattened, are position-major, and a channel-major gradient made the
    kernels it met on the way back strided ones: 1.6 ms of a 9.7 ms iteration at 1024 px on an
    H100."""

    @staticmethod
    def forward(ctx, flat: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(flat)
        return _fp32_product(flat, flat.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (flat,) = ctx.saved_tensors
        symmetric = (grad + grad.transpose(1, 2)).to(flat.dtype)
        if flat.stride(1) == 1:  # position-major (channels last)
            return (flat.transpose(1, 2) @ symmetric).transpose(1, 2)
        return symmetric @ flat


def _fp32_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b accumulated and returned in fp32 at least: on CUDA, bf16 operands go to the tensor
    cores as they are (`out_dtype`, which CPUs lack: there they are upcast)."""
    if a.dtype not in (torch.bfloat16, torch.float16):
        return a @ b
    if a.is_cuda:
        return torch.bmm(a, b, out_dtype=torch.float32)
    return a.float() @ b.float()


def gram(features: torch.Tensor) -> torch.Tensor:
    """Gram matrix of (B, C, H, W) features divided by the number of positions H*W, in fp32."""
    b, c, h, w = features.shape
    return _FlatGram.apply(features.reshape(b, c, h * w)) / (h * w)


class PerImage(nn.Module):
    """A loss whose buffers hold one row per image: the losses of several jobs join into one that
    scores their batch in one pass (`join`), and a job that leaves the batch is dropped (`keep`)."""

    @classmethod
    def join(cls: type[L], losses: Sequence[L]) -> L:
        joined = cls.__new__(cls)
        nn.Module.__init__(joined)
        for name, _ in losses[0].named_buffers(recurse=False):
            joined.register_buffer(name, torch.cat([loss.get_buffer(name) for loss in losses]))
        return joined

    def keep(self, rows: torch.Tensor) -> None:
        """Only these rows go on, in this order (and in their layout: channels last stays so)."""
        for name, buffer in list(self.named_buffers(recurse=False)):
            setattr(self, name, buffer[rows])


class ContentLoss(PerImage):
    """‖F − P‖² / ‖P‖²: squared feature error relative to the content's own energy."""

    def __init__(self, target: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("target", target.detach())
        self.register_buffer("norm", _per_image(target.detach().pow(2)).clamp_min(1e-8))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return _per_image((features - self.target).pow(2)) / self.norm


# The start distance counts as at least this fraction of the target's norm: a style that its
# content already matches (say, the same image) must not get an unbounded weight.
MIN_START_DISTANCE = 0.1


class StyleLoss(PerImage):
    """‖G(F) − A‖²_F / ‖G(C) − A‖²_F: the squared Gram error as a fraction of the content image's own.

    Every layer of every style starts at 1 from the content image, so the style weight asks for the
    same share of the way to the style whatever the painting and the layer; normalising by ‖A‖²
    instead let the layers and styles furthest from the photograph (relu5_1 of a painting unlike
    it) dominate, which bent the content more than the style gained.
    """

    def __init__(self, target_gram: torch.Tensor, start_gram: torch.Tensor) -> None:
        super().__init__()
        target, start = target_gram.detach(), start_gram.detach()
        floor = MIN_START_DISTANCE**2 * _per_image(target.pow(2))
        self.register_buffer("target", target)
        self.register_buffer("norm", torch.maximum(_per_image((start - target).pow(2)), floor).clamp_min(1e-8))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return _per_image((gram(features) - self.target).pow(2)) / self.norm


# Charbonnier smoothing of the gradient magnitude, so that total variation is differentiable where
# the image is flat (images in [0, 1]).
TV_EPSILON = 1e-3


class TVLoss(nn.Module):
    """Total variation: the mean magnitude of the image's gradient (forward differences, per channel).

    The absolute (Rudin-Osher-Fatemi) form, not the squared one: it clears low-amplitude speckle
    from flat regions and leaves edges, where a squared penalty, proportional to the square of
    a difference, barely sees speckle a few grey levels high and blurs edges first
    (BENCHMARKS.md, grain). Measured per pixel of the output: at a coarser stage, `scale` (its
    size over the output's) times the magnitude per pixel of its own, so that the weight asks for
    the same smoothness of the same image at every stage."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        dx = image[..., :-1, 1:] - image[..., :-1, :-1]
        dy = image[..., 1:, :-1] - image[..., :-1, :-1]
        return self.scale * ((dx.pow(2) + dy.pow(2) + TV_EPSILON**2).sqrt() - TV_EPSILON).flatten(1).mean(1)
