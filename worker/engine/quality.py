"""A fixed yardstick for every result: the Caffe VGG-19 with max pooling, whatever the job used.

style_distance   = mean over relu1_1..relu5_1 of ‖G(out) − G(style)‖_F / ‖G(style)‖_F
content_distance = 1 − mean cosine similarity of relu4_2 feature vectors (output vs content)
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from shared.params import MIN_SIDE

from .images import fit_longest_side, to_tensor
from .losses import gram
from .vgg import load_network

STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
CONTENT_LAYER = "relu4_2"


@torch.no_grad()
def quality_report(output: Image.Image, content: Image.Image, styles: Sequence[Image.Image],
                   blend: Sequence[float] | None = None, device: str = "cpu") -> dict[str, float]:
    """Scores for `output` against its content and its styles (Gram targets blended by `blend`)."""
    net = load_network("caffe", "max", device)
    out = to_tensor(output, device)
    content_t = to_tensor(content.resize(output.size, Image.LANCZOS), device)
    blend = blend or [1 / len(styles)] * len(styles)
    layers = frozenset(STYLE_LAYERS + (CONTENT_LAYER,))
    f_out, f_content = net(out, layers), net(content_t, layers)
    targets = {n: 0 for n in STYLE_LAYERS}
    for style, weight in zip(styles, blend):
        f_style = net(to_tensor(fit_longest_side(style, max(output.size), MIN_SIDE), device), frozenset(STYLE_LAYERS))
        for n in STYLE_LAYERS:
            targets[n] = targets[n] + weight * gram(f_style[n])
    style_distance = sum(
        (torch.linalg.norm(gram(f_out[n]) - targets[n]) / torch.linalg.norm(targets[n])).item() for n in STYLE_LAYERS
    ) / len(STYLE_LAYERS)
    cosine = F.cosine_similarity(f_out[CONTENT_LAYER], f_content[CONTENT_LAYER], dim=1, eps=1e-8)
    return {"style_distance": round(style_distance, 4), "content_distance": round(1 - cosine.mean().item(), 4)}
