"""`atelier stylize` (the engine from the command line, with a progress bar on stderr) and
`atelier worker` (this machine's GPU workers, `worker.fleet`)."""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from shared.images import ImageError, open_image
from shared.param_flags import add_param_flags, given_params
from shared.params import ParamError, Params


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("stylize", help="render CONTENT in the style of STYLE(s)",
                              description="Gatys et al. style transfer of one image.")
    p.add_argument("content", help="content image (photo)")
    p.add_argument("styles", nargs="+", metavar="STYLE", help="style image(s), blended by --style-weights")
    p.add_argument("-o", "--output", required=True, help="output image; the format follows the extension")
    add_param_flags(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--snapshot-every", type=int, metavar="N", help="save the image every N iterations, into "
                                                                   "--snapshot-dir (default: no snapshots)")
    p.add_argument("--snapshot-dir", type=Path, metavar="DIR", help="where snapshots go (default: none)")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line of stdout "
                                                       "(default: a one-line summary on stderr)")
    p.set_defaults(func=run)
    w = subparsers.add_parser("worker", help="run this machine's GPU workers: one per visible GPU, or one on the CPU",
                              description="One Celery worker process per visible GPU (each pinned to its device), "
                                          "or one CPU worker; restarted if they die; Ctrl-C or SIGTERM stops them, "
                                          "handing running jobs back. Settings: ATELIER_* and AWS_* variables.")
    w.add_argument("--device", help="auto (default: ATELIER_DEVICE), cpu, cuda (every visible GPU) or cuda:N")
    w.add_argument("--queues", default="gpu", help="Celery queues to consume (default: gpu)")
    w.set_defaults(func=run_workers)


def run_workers(args: argparse.Namespace) -> int:
    from shared.config import Settings
    from worker import fleet

    settings = Settings.from_env()
    return fleet.run(settings, args.device or settings.device, args.queues)


def run(args: argparse.Namespace) -> int:
    from worker.engine import DeviceError, WeightsError  # torch loads for this command only

    try:
        return _stylize(args)
    except (ImageError, ParamError, WeightsError, DeviceError) as exc:
        print(f"atelier stylize: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("atelier stylize: interrupted", file=sys.stderr)
        return 130


def _stylize(args: argparse.Namespace) -> int:
    from worker.engine import Iterate, stylize

    values = given_params(args)
    init_path = values.get("init") if values.get("init") not in (None, "content", "noise") else None
    if init_path is not None:
        values["init"] = "image"
    params = Params(**values)
    output = Path(args.output)
    _check_output(output)
    snapshots = _snapshot_dir(args)
    content = open_image(args.content)
    styles = [open_image(s) for s in args.styles]
    init_image = None if init_path is None else open_image(init_path)

    bar = tqdm(desc="stylize", unit="it", file=sys.stderr, dynamic_ncols=True)
    shown = [-math.inf]  # when the loss was last read for the bar: at most once a second (it waits for the device)

    def callback(it: Iterate) -> None:
        bar.total = it.total
        if time.monotonic() - shown[0] >= 1 or it.iteration == it.total:
            bar.set_postfix_str(f"scale {it.scale + 1}/{it.scales} {it.width}x{it.height} loss {it.losses['total']:.4g}",
                                refresh=False)
            shown[0] = time.monotonic()
        bar.update(it.iteration - bar.n)
        if snapshots is not None and it.iteration % args.snapshot_every == 0:
            it.image().save(snapshots / f"{output.stem}_{it.iteration:06d}{output.suffix}")

    try:
        result = stylize(content, styles, params, init_image=init_image, device=args.device, callback=callback)
    finally:
        bar.close()
    result.image.save(output)
    summary = {
        "output": str(output), "width": result.image.width, "height": result.image.height,
        "iterations": result.iterations, "seconds": round(result.seconds, 2), "device": result.device,
        "peak_memory_mb": round(result.peak_memory_mb, 1), "losses": result.losses, "quality": result.quality,
        "params": result.params.to_dict(),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{output}: {result.image.width}x{result.image.height}, {result.iterations} iterations in "
              f"{result.seconds:.1f} s on {result.device} in {result.params.precision}; quality {result.quality}",
              file=sys.stderr)
    return 0


def _check_output(output: Path) -> None:
    """Fail before minutes of work, not after: a known image extension in an existing folder."""
    if output.suffix.lower() not in Image.registered_extensions():
        raise ParamError("output", f"unknown image extension {output.suffix!r}; use .png, .jpg or .webp")
    if not output.parent.is_dir():
        raise ParamError("output", f"folder {output.parent} does not exist")


def _snapshot_dir(args: argparse.Namespace) -> Path | None:
    if args.snapshot_every is None and args.snapshot_dir is None:
        return None
    if args.snapshot_every is None or args.snapshot_dir is None:
        raise ParamError("snapshot_every", "--snapshot-every and --snapshot-dir go together")
    if args.snapshot_every < 1:
        raise ParamError("snapshot_every", f"must be at least 1, not {args.snapshot_every}")
    args.snapshot_dir.mkdir(parents=True, exist_ok=True)
    return args.snapshot_dir
