"""How far the bf16 Gram's gradient is from exact: the features' gradient (Fᵀ S)ᵀ as the engine
computes it from bf16 features (`worker.engine.losses.gram`: a bf16 product) and as an fp32
product rounded to bf16 would (how it was computed before), each against fp64 on the same bf16
features.

    .venv/bin/python bench/gram_precision.py [--size 256] [--device cpu|cuda]

The features are VGG-19's (Caffe weights) relu1_1 to relu5_1 of Tübingen at `--size`, through
the bf16 fast path; S is the start's gradient, 2(G − A) symmetrised with A The Starry Night's
Gram, and a random symmetric one (mixed signs, as near convergence). Prints one JSON line per
layer: ‖g − g₆₄‖ / ‖g₆₄‖ for each way and each S.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.images import open_image  # noqa: E402
from shared.params import Params  # noqa: E402
from worker.engine.losses import gram  # noqa: E402
from worker.engine.transfer import Transfer  # noqa: E402

from engine import CONTENT, STYLE  # noqa: E402  (bench/engine.py)


def errors(features: torch.Tensor, s: torch.Tensor) -> dict[str, float]:
    """The two ways' relative errors for the gradient S of the Gram of bf16 `features`."""
    b, c, h, w = features.shape
    flat = features.detach().requires_grad_(True)
    (gram(flat) * s.float() * (h * w)).sum().backward()  # the engine's: d(ΣS∘FFᵀ)/dF = (S + Sᵀ) F
    exact64 = features.double().reshape(b, c, h * w)
    exact = ((s + s.transpose(1, 2)) @ exact64).reshape(b, c, h, w)
    fp32 = ((s + s.transpose(1, 2)).float() @ features.float().reshape(b, c, h * w)).bfloat16().reshape(b, c, h, w)

    def error(g: torch.Tensor) -> float:
        return float((g.double() - exact).norm() / exact.norm())
    return {"ours_bf16": error(flat.grad), "fp32_rounded_to_bf16": error(fp32)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    transfer = Transfer(open_image(CONTENT), [open_image(STYLE)], Params(size=args.size, scales=1), device=args.device)
    stage = transfer.stages[0]
    content = transfer._targets(stage)[0]
    targets = transfer._style_grams(stage, content)
    layers = transfer.params.style_layers
    with torch.no_grad(), torch.autocast(content.device.type, torch.bfloat16):
        features = transfer.net(content, frozenset(layers))
    generator = torch.Generator(content.device).manual_seed(0)
    for layer in layers:
        f = features[layer]
        start = 2 * (gram(f).double() - targets[layer].double())
        noise = torch.randn(start.shape, dtype=torch.float64, device=f.device, generator=generator)
        print(json.dumps({"layer": layer, "channels": f.shape[1], "positions": f.shape[2] * f.shape[3],
                          "start_gradient": errors(f, start), "random_gradient": errors(f, noise)}))


if __name__ == "__main__":
    main()
