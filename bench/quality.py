"""Quality of the defaults on the benchmark set, against jcjohnson/neural-style's published results.

    .venv/bin/python bench/quality.py                          # the four pairs at 512 px, ~6 min idle
    .venv/bin/python bench/quality.py --size 256 --pairs golden_gate:the_scream   # a quick look

Each pair runs as its own process, `atelier stylize CONTENT STYLE -o OUT --json` with no other flag
than --size (the defaults, as a user gets them), timed whole: imports, network, targets, the
optimisation and the quality report. Prints each pair's style_distance and content_distance (lower
is better) next to the reference, whether both are at least as good, its grain (bench/grain.py) next
to the reference's, and the seconds; then the load
average before and after (the seconds mean little on a busy machine; the scores are deterministic).
Writes a contact sheet, one row per pair (content, style, result), to --sheet (docs/quality.jpg) and,
last, one JSON line with every figure. The references are for 512 px: at other sizes "match" is only
indicative.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

from grain import grain  # bench/grain.py

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
# jcjohnson/neural-style's published results (1000 L-BFGS iterations at 512 px, its
# examples/outputs/*.png) scored by the quality report, and their grain by bench/grain.py's measure:
# (style_distance, content_distance, grain)
REFERENCES = {
    ("tubingen", "starry_night"): (0.2708, 0.4001, 11.59),
    ("tubingen", "the_scream"): (0.1806, 0.4022, 1.95),
    ("tubingen", "shipwreck"): (0.2163, 0.3034, 1.96),
    ("golden_gate", "the_scream"): (0.2485, 0.2356, 3.47),
}
ROW_HEIGHT = 256
CAPTION = 22


def parse_pairs(text: str | None) -> list[tuple[str, str]]:
    if text is None:
        return list(REFERENCES)
    pairs = [tuple(item.split(":")) for item in text.split(",")]
    unknown = [p for p in pairs if p not in REFERENCES]
    if unknown:
        raise SystemExit(f"unknown pair(s) {unknown}; choose from "
                         f"{', '.join(c + ':' + s for c, s in REFERENCES)}")
    return pairs


def run_pair(content: str, style: str, size: int, out: Path) -> dict:
    """One whole `atelier stylize` process; its progress bar goes to this terminal."""
    command = [sys.executable, "-m", "shared.cli", "stylize", str(SAMPLES / f"{content}.jpg"),
               str(SAMPLES / f"{style}.jpg"), "-o", str(out), "--size", str(size), "--json"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=True)
    seconds = time.perf_counter() - start
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    ref_style, ref_content, ref_grain = REFERENCES[(content, style)]
    quality = summary["quality"]
    measured = round(grain(Image.open(out).convert("RGB"), Image.open(SAMPLES / f"{content}.jpg").convert("RGB")), 2)
    return {"content": content, "style": style, "seconds": round(seconds, 1), "engine_seconds": summary["seconds"],
            "iterations": summary["iterations"], **quality, "grain": measured, "reference_style": ref_style,
            "reference_content": ref_content, "reference_grain": ref_grain,
            "match": quality["style_distance"] <= ref_style and quality["content_distance"] <= ref_content,
            "grain_match": measured <= ref_grain}


def contact_sheet(rows: list[dict], results: list[Path], path: Path) -> None:
    """One row per pair: content, style, result, each ROW_HEIGHT px high, scores under the result."""
    tiles = []
    for row, result in zip(rows, results):
        images = [Image.open(SAMPLES / f"{row['content']}.jpg"), Image.open(SAMPLES / f"{row['style']}.jpg"),
                  Image.open(result)]
        tiles.append([im.convert("RGB").resize((round(im.width * ROW_HEIGHT / im.height), ROW_HEIGHT), Image.LANCZOS)
                      for im in images])
    width = max(sum(t.width for t in row) for row in tiles) + 4 * 8
    sheet = Image.new("RGB", (width, len(tiles) * (ROW_HEIGHT + CAPTION + 8) + 8), "white")
    draw = ImageDraw.Draw(sheet)
    y = 8
    for row, images in zip(rows, tiles):
        x = 8
        for image in images:
            sheet.paste(image, (x, y))
            x += image.width + 8
        caption = (f"{row['content']} x {row['style']}: style {row['style_distance']:.4f} "
                   f"(ref {row['reference_style']:.4f}), content {row['content_distance']:.4f} "
                   f"(ref {row['reference_content']:.4f}) {'match' if row['match'] else 'NO MATCH'}, "
                   f"grain {row['grain']:.2f} (ref {row['reference_grain']:.2f})")
        draw.text((8, y + ROW_HEIGHT + 4), caption, fill="black")
        y += ROW_HEIGHT + CAPTION + 8
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, quality=88)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="output size, longest side (default: %(default)s)")
    parser.add_argument("--pairs", help="comma-separated CONTENT:STYLE pairs (default: all four)")
    parser.add_argument("--sheet", type=Path, default=ROOT / "docs" / "quality.jpg",
                        help="contact sheet to write (default: docs/quality.jpg)")
    args = parser.parse_args()
    pairs = parse_pairs(args.pairs)
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    rows, results = [], []
    with tempfile.TemporaryDirectory() as directory:
        for content, style in pairs:
            out = Path(directory) / f"{content}_{style}.png"
            row = run_pair(content, style, args.size, out)
            rows.append(row)
            results.append(out)
            print(f"{content} x {style}: style_distance {row['style_distance']:.4f} (ref {row['reference_style']:.4f}), "
                  f"content_distance {row['content_distance']:.4f} (ref {row['reference_content']:.4f}), "
                  f"match {'yes' if row['match'] else 'no'}, grain {row['grain']:.2f} (ref {row['reference_grain']:.2f}), "
                  f"{row['seconds']:.1f} s whole process "
                  f"({row['engine_seconds']:.1f} s in the engine, {row['iterations']} iterations)", flush=True)
        contact_sheet(rows, results, args.sheet)
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    matched, smooth = sum(r["match"] for r in rows), sum(r["grain_match"] for r in rows)
    print(f"{matched}/{len(rows)} pairs match at {args.size} px, {smooth}/{len(rows)} with no more grain than "
          f"the reference; contact sheet {args.sheet}")
    print(f"load average before {' '.join(load_before)}, after {' '.join(load_after)}")
    print(json.dumps({"size": args.size, "pairs": rows, "matched": matched, "grain_matched": smooth,
                      "load_before": load_before, "load_after": load_after}))


if __name__ == "__main__":
    main()
