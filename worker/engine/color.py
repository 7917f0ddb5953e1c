"""Colour preservation (Gatys et al. 2017, "Controlling perceptual factors")."""
from __future__ import annotations

import torch

# RGB <-> YIQ (NTSC); luminance Y, chrominance I and Q.
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def _apply(matrix: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", matrix.to(image), image)


def rgb_to_yiq(image: torch.Tensor) -> torch.Tensor:
    return _apply(_RGB_TO_YIQ, image)


def yiq_to_rgb(image: torch.Tensor) -> torch.Tensor:
    return _apply(_YIQ_TO_RGB, image)


def luminance(image: torch.Tensor) -> torch.Tensor:
    """The Y channel repeated to three channels, so VGG sees a grey image."""
    return rgb_to_yiq(image)[:, :1].expand(-1, 3, -1, -1).contiguous()


def match_luminance(style_luma: torch.Tensor, content_luma: torch.Tensor) -> torch.Tensor:
    """Shift and scale the style's luminance to the content's mean and std (paper, eq. 8)."""
    s_mean, s_std = style_luma.mean(), style_luma.std().clamp_min(1e-5)
    c_mean, c_std = content_luma.mean(), content_luma.std()
    return ((style_luma - s_mean) * (c_std / s_std) + c_mean).clamp(0, 1)


def recombine(luma_image: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Take Y from the stylised luminance image and I, Q from the content."""
    yiq = rgb_to_yiq(content)
    y = rgb_to_yiq(luma_image)[:, :1]
    return yiq_to_rgb(torch.cat([y, yiq[:, 1:]], dim=1)).clamp(0, 1)


def _sqrtm(cov: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(cov)
    values = values.clamp_min(1e-8).sqrt()
    if inverse:
        values = values.reciprocal()
    return vectors @ torch.diag(values) @ vectors.T


def match_histogram(style: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Affine colour transform of the style so its mean and covariance equal the content's."""
    def stats(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pixels = image.reshape(3, -1).double()
        mean = pixels.mean(dim=1, keepdim=True)
        centred = pixels - mean
        ridge = 1e-6 * torch.eye(3, dtype=torch.float64, device=pixels.device)
        return centred, mean, centred @ centred.T / pixels.shape[1] + ridge

    s_centred, _, s_cov = stats(style)
    _, c_mean, c_cov = stats(content)
    transform = _sqrtm(c_cov) @ _sqrtm(s_cov, inverse=True)
    matched = (transform @ s_centred + c_mean).reshape(style.shape)
    return matched.to(style.dtype).clamp(0, 1)
