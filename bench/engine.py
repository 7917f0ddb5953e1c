"""Engine benchmark: per-iteration cost against pastiche, and time-to-quality of our defaults.

    .venv/bin/python bench/engine.py [--steps 20] [--size 256] [--device cpu] [--precision auto|fp32|bf16]
                                     [--skip-quality]

1. Per-iteration time at SIZE px: pastiche (PyPI, fp32) and our engine (in PRECISION: `auto` is
   bf16 on GPUs and on CPUs with AVX512_BF16), same image, same number of Adam steps (one network
   evaluation each), timed after warm-up, setup excluded.
2. Time-to-quality: our defaults at 512 px on Tübingen x The Starry Night, end to end
   (targets computed, optimisation, quality report), against the scores of
   jcjohnson/neural-style's published result (style 0.271, content 0.400).
Prints a table and, last, one JSON line with every figure.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.images import open_image  # noqa: E402
from shared.params import Params  # noqa: E402
from worker.engine import Iterate, resolve_device, resolve_precision, stylize  # noqa: E402
from worker.engine.loop import GRAPH_AFTER  # noqa: E402

CONTENT = ROOT / "samples" / "tubingen.jpg"
STYLE = ROOT / "samples" / "starry_night.jpg"
REFERENCE = {"style_distance": 0.271, "content_distance": 0.400}  # jcjohnson/neural-style, 1000 L-BFGS @ 512
WARMUP = GRAPH_AFTER + 2  # steps before the clock starts: past the capture of a CUDA graph


def pastiche_seconds_per_step(size: int, steps: int, device: str) -> float:
    from pastiche.pastiche import PasticheArtist

    artist = PasticheArtist(str(CONTENT), [str(STYLE)], optimizer="adam", size=size, device=device)
    times = []
    for _ in range(WARMUP + steps):
        start = time.perf_counter()
        artist.draw()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[WARMUP:])


def ours_seconds_per_step(size: int, steps: int, device: str, precision: str) -> float:
    params = Params(size=size, scales=1, iterations=WARMUP + steps, optimizer="adam", precision=precision)
    stamps: list[float] = []

    def callback(it: Iterate) -> None:
        sync(device)
        stamps.append(time.perf_counter())

    stylize(open_image(CONTENT), [open_image(STYLE)], params, device=device, callback=callback)
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return statistics.median(gaps[WARMUP - 1:])


def time_to_quality(device: str) -> dict:
    content, style = open_image(CONTENT), open_image(STYLE)
    start = time.perf_counter()
    result = stylize(content, [style], Params(size=512), device=device)
    seconds = time.perf_counter() - start
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    result.image.save(out / "tubingen_starry_night_512.png")
    return {"seconds": round(seconds, 1), "iterations": result.iterations, **result.quality,
            "meets_reference": all(result.quality[k] <= v for k, v in REFERENCE.items())}


def sync(device: str) -> None:
    """Wait for the device, so that a timestamp means the work before it is done."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="our engine's")
    parser.add_argument("--skip-quality", action="store_true")
    args = parser.parse_args()
    device = resolve_device(args.device)
    # both implementations load their networks once before timing starts
    ours = ours_seconds_per_step(args.size, args.steps, device, args.precision)
    theirs = pastiche_seconds_per_step(args.size, args.steps, device)
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "torch": torch.__version__, "size": args.size, "adam_steps": args.steps,
        "precision": resolve_precision(args.precision, device),
        "ours_s_per_step": round(ours, 4), "pastiche_s_per_step": round(theirs, 4),
        "ours_vs_pastiche": round(ours / theirs, 3),
    }
    print(f"per Adam step at {args.size} px: ours {ours * 1000:.0f} ms, pastiche {theirs * 1000:.0f} ms "
          f"(ours/pastiche = {ours / theirs:.2f})", flush=True)
    if not args.skip_quality:
        report["time_to_quality"] = ttq = time_to_quality(device)
        print(f"defaults at 512 px: {ttq['seconds']} s, {ttq['iterations']} iterations, style_distance "
              f"{ttq['style_distance']} (reference {REFERENCE['style_distance']}), content_distance "
              f"{ttq['content_distance']} (reference {REFERENCE['content_distance']})", flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
