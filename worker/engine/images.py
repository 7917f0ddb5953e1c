"""PIL <-> tensor conversions and resizing for the engine (RGB in [0, 1], NCHW)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def fit_longest_side(image: Image.Image, longest: int, min_side: int = 1) -> Image.Image:
    """Resize so the longest side is `longest`, keeping the aspect ratio; no side below `min_side`
    (VGG's relu5_1 needs 16 px)."""
    w, h = image.size
    scale = longest / max(w, h)
    size = (max(min_side, round(w * scale)), max(min_side, round(h * scale)))
    return image if size == image.size else image.resize(size, Image.LANCZOS)


def to_tensor(image: Image.Image, device: str | torch.device = "cpu") -> torch.Tensor:
    array = torch.from_numpy(np.asarray(image.convert("RGB")).copy())
    return (array.permute(2, 0, 1).unsqueeze(0).to(device).float() / 255).contiguous()


def to_image(tensor: torch.Tensor) -> Image.Image:
    array = (tensor.detach()[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, "RGB")


def resize(tensor: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if tensor.shape[-2:] == (height, width):
        return tensor
    return F.interpolate(tensor, size=(height, width), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
