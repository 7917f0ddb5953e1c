"""The bf16 fast path's quality against fp32's, default jobs on several pairs and sizes.

    python3 bench/bf16_quality.py --device cuda --sizes 256 512
    python3 bench/bf16_quality.py --device cpu --sizes 32 --iterations 3   # smoke: a CPU may only emulate bf16

L-BFGS on the two paths takes other steps and lands elsewhere, so one pair says little about how
far apart the paths are (on an H100 one pair's content scored 2.5% worse in bf16, another's 4.2%
better; `tests/engine/test_transfer.py` holds the mean of the four to 2%): this runs every pair of
`PAIRS` (bench/quality.py's) at each size in fp32,
in bf16, and in bf16 with its Grams multiplied in fp32 (`bench/gpu.py`'s `bf16_grams` undone),
and prints each score's ratio to fp32's (below 1 is better) and one JSON line.
"""
from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu import _undone  # noqa: E402  (bench/gpu.py)
from quality import REFERENCES, SAMPLES  # noqa: E402  (bench/quality.py)
from shared.images import open_image  # noqa: E402
from shared.params import Params  # noqa: E402
from worker.engine import stylize  # noqa: E402

PAIRS = list(REFERENCES)  # content and style names
SCORES = ("style_distance", "content_distance")


def quality(images: tuple[Image.Image, Image.Image], size: int, precision: str, device: str,
            iterations: int | None) -> dict[str, float]:
    """A default job's quality report at this size and precision (`iterations`: the job's, if not the default)."""
    content, style = images
    given = {} if iterations is None else {"iterations": iterations}
    return stylize(content, [style], Params(size=size, precision=precision, **given), device=device).quality


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--iterations", type=int, help="each job's (default: the service's)")
    args = parser.parse_args()
    run = functools.partial(quality, device=args.device, iterations=args.iterations)
    rows = []
    for size in args.sizes:
        for content_name, style_name in PAIRS:
            images = open_image(SAMPLES / f"{content_name}.jpg"), open_image(SAMPLES / f"{style_name}.jpg")
            row = {"size": size, "pair": f"{content_name}:{style_name}", "fp32": run(images, size, "fp32"),
                   "bf16": run(images, size, "bf16")}
            with _undone("bf16_grams"):
                row["bf16_fp32_grams"] = run(images, size, "bf16")
            for path in ("bf16", "bf16_fp32_grams"):
                row[f"{path}_ratio"] = {s: round(row[path][s] / row["fp32"][s], 4) for s in SCORES}
            rows.append(row)
            print(f"{size} px {row['pair']}: fp32 {row['fp32']}; bf16 / fp32 {row['bf16_ratio']}; "
                  f"with fp32 Grams {row['bf16_fp32_grams_ratio']}", file=sys.stderr, flush=True)
    for path in ("bf16", "bf16_fp32_grams"):
        print(f"{path} / fp32, geometric mean over {len(rows)} jobs: " + ", ".join(
            f"{s} {statistics.geometric_mean(r[f'{path}_ratio'][s] for r in rows):.4f}" for s in SCORES),
            file=sys.stderr)
    print(json.dumps({"device": args.device, "iterations": args.iterations, "rows": rows}))


if __name__ == "__main__":
    main()
