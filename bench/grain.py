"""Grain in flat regions against the total-variation weight, at the defaults otherwise.

    .venv/bin/python bench/grain.py --pair golden_gate:the_scream --tv 0,10,20

Grain is the mean absolute difference between horizontal neighbours (grey levels, 0-255) of the
result, over the flattest 30% of the content (smallest gradient after a 2 px blur): speckle that
flat sky or water should not have. Prints one JSON line per weight with the quality report's scores.

    .venv/bin/python bench/grain.py --pair golden_gate:the_scream --image golden_gate_scream.png

measures an image made elsewhere against the pair's content instead (the references' grain in
bench/quality.py: jcjohnson/neural-style's examples/outputs/*.png).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def grain(result: Image.Image, content: Image.Image) -> float:
    flat_source = np.asarray(content.resize(result.size, Image.LANCZOS).convert("L")
                             .filter(ImageFilter.GaussianBlur(2)), dtype=float)
    gy, gx = np.gradient(flat_source)
    gradient = np.hypot(gx, gy)
    flat = gradient < np.percentile(gradient, 30)
    grey = np.asarray(result.convert("L"), dtype=float)
    return float(np.abs(np.diff(grey, axis=1))[flat[:, 1:]].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", default="golden_gate:the_scream", help="CONTENT:STYLE from samples/")
    parser.add_argument("--tv", default="0,10,20", help="comma-separated tv_weight values")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--image", type=Path, help="only measure this image's grain (no run)")
    args = parser.parse_args()
    content_name, style_name = args.pair.split(":")
    if args.image:
        content = Image.open(ROOT / "samples" / f"{content_name}.jpg").convert("RGB")
        print(json.dumps({"pair": args.pair, "image": str(args.image),
                          "grain": round(grain(Image.open(args.image).convert("RGB"), content), 2)}))
        return
    from shared.images import open_image  # the engine only here: bench/quality.py imports `grain` alone
    from shared.params import Params
    from worker.engine import stylize

    content = open_image((ROOT / "samples" / f"{content_name}.jpg").read_bytes())
    style = open_image((ROOT / "samples" / f"{style_name}.jpg").read_bytes())
    for tv in (float(v) for v in args.tv.split(",")):
        started = time.perf_counter()
        result = stylize(content, [style], Params(size=args.size, tv_weight=tv))
        print(json.dumps({"pair": args.pair, "tv_weight": tv, **result.quality,
                          "grain": round(grain(result.image, content), 2),
                          "seconds": round(time.perf_counter() - started, 1)}), flush=True)


if __name__ == "__main__":
    main()
