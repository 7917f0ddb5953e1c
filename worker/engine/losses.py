"""Loss terms as small modules. Each is normalised by its target so that weights mean the
same thing at every layer, image size and weight source."""
from __future__ import annotations

import torch
from torch import nn


class _FlatGram(torch.autograd.Function):
    """F Fᵀ with the symmetric backward (G' + G'ᵀ) F: one matmul where autograd would do two."""

    @staticmethod
    def forward(ctx, flat: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(flat)
        return flat @ flat.transpose(1, 2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (flat,) = ctx.saved_tensors
        return (grad + grad.transpose(1, 2)) @ flat


def gram(features: torch.Tensor) -> torch.Tensor:
    """Gram matrix of (B, C, H, W) features divided by the number of positions H*W."""
    b, c, h, w = features.shape
    return _FlatGram.apply(features.reshape(b, c, h * w)) / (h * w)


class ContentLoss(nn.Module):
    """‖F − P‖² / ‖P‖²: squared feature error relative to the content's own energy."""

    def __init__(self, target: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("target", target.detach())
        self.register_buffer("norm", target.detach().pow(2).sum().clamp_min(1e-8))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.target).pow(2).sum() / self.norm


class StyleLoss(nn.Module):
    """‖G(F) − A‖²_F / ‖A‖²_F: the square of the quality report's per-layer style distance."""

    def __init__(self, target_gram: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("target", target_gram.detach())
        self.register_buffer("norm", target_gram.detach().pow(2).sum().clamp_min(1e-8))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (gram(features) - self.target).pow(2).sum() / self.norm


class TVLoss(nn.Module):
    """Mean squared difference between neighbouring pixels (images in [0, 1])."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        dx = image[..., :, 1:] - image[..., :, :-1]
        dy = image[..., 1:, :] - image[..., :-1, :]
        return dx.pow(2).mean() + dy.pow(2).mean()
