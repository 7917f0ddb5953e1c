"""A fixed yardstick for every result: the Caffe VGG-19 with max pooling, whatever the job used.

style_distance   = mean over relu1_1..relu5_1 of ‖G(out) − G(style)‖_F / ‖G(style)‖_F
content_distance = 1 − mean cosine similarity of relu4_2 feature vectors (output vs content)
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from shared.params import MIN_SIDE

from .images import fit_longest_side, to_tensor
from .losses import gram
from .vgg import load_network

YARDSTICK = ("caffe", "max")  # weights and pooling of the network that scores
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
CONTENT_LAYER = "relu4_2"


def style_targets(styles: Sequence[Image.Image], longest: int, blend: Sequence[float],
                  device: str = "cpu") -> dict[str, torch.Tensor]:
    """The report's blended Gram targets, the styles scaled to the output's longest side."""
    net = load_network(*YARDSTICK, device)
    targets: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for style, weight in zip(styles, blend):
            features = net(to_tensor(fit_longest_side(style, longest, MIN_SIDE), device), frozenset(STYLE_LAYERS))
            for n in STYLE_LAYERS:
                targets[n] = targets.get(n, 0) + weight * gram(features[n])
    return targets


@torch.no_grad()
def quality_report(output: Image.Image, content: Image.Image, styles: Sequence[Image.Image],
                   blend: Sequence[float] | None = None, device: str = "cpu",
                   targets: Mapping[str, torch.Tensor] | None = None) -> dict[str, float]:
    """Scores for `output` against its content and its styles (Gram targets blended by `blend`).

    `targets`: what `style_targets` returns for these styles at max(output.size), when the caller
    already has them (the engine's last stage, when it ran on the yardstick): saves the style passes.
    """
    net = load_network(*YARDSTICK, device)
    blend = blend or [1 / len(styles)] * len(styles)
    if targets is None:
        targets = style_targets(styles, max(output.size), blend, device)
    f_out = net(to_tensor(output, device), frozenset(STYLE_LAYERS + (CONTENT_LAYER,)))
    # the content only to relu4_2: three quarters of a pass
    content_t = to_tensor(content.resize(output.size, Image.LANCZOS), device)
    f_content = net(content_t, frozenset((CONTENT_LAYER,)))
    style_distance = sum(
        (torch.linalg.norm(gram(f_out[n]) - targets[n]) / torch.linalg.norm(targets[n])).item() for n in STYLE_LAYERS
    ) / len(STYLE_LAYERS)
    cosine = F.cosine_similarity(f_out[CONTENT_LAYER], f_content[CONTENT_LAYER], dim=1, eps=1e-8)
    return {"style_distance": round(style_distance, 4), "content_distance": round(1 - cosine.mean().item(), 4)}
