"""`atelier stylize`: the engine from the command line, with a progress bar on stderr."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from shared.images import ImageError, open_image
from worker.engine import DeviceError, Iterate, ParamError, Params, WeightsError, stylize
from worker.engine.params import COLOR_MODES, OPTIMIZERS, PRECISIONS
from worker.engine.vgg import POOLINGS

USER_ERRORS = (ImageError, ParamError, WeightsError, DeviceError)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("stylize", help="render CONTENT in the style of STYLE(s)",
                              description="Gatys et al. style transfer of one image.")
    p.add_argument("content", help="content image (photo)")
    p.add_argument("styles", nargs="+", metavar="STYLE", help="style image(s), blended by --style-weights")
    p.add_argument("-o", "--output", required=True, help="output image; the format follows the extension")
    p.add_argument("--size", type=int, default=Params.size, help="longest side of the output in pixels")
    p.add_argument("--iterations", type=int, help="total iterations over all scales (default: the engine's choice)")
    p.add_argument("--scales", type=int, help="coarse-to-fine scales; 1 = single scale (default: auto)")
    p.add_argument("--style-weights", type=float, nargs="+", metavar="W", help="blend weight per style image")
    p.add_argument("--content-weight", type=float, default=Params.content_weight)
    p.add_argument("--style-weight", type=float, default=Params.style_weight)
    p.add_argument("--tv-weight", type=float, default=Params.tv_weight)
    p.add_argument("--style-scale", type=float, default=Params.style_scale,
                   help="size of the style image relative to the output")
    p.add_argument("--init", default=Params.init, help="content, noise, or an image path")
    p.add_argument("--seed", type=int, default=Params.seed)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=Params.optimizer)
    p.add_argument("--learning-rate", type=float, default=Params.learning_rate, help="Adam's step size")
    p.add_argument("--pooling", choices=POOLINGS, default=Params.pooling)
    p.add_argument("--preserve-color", choices=COLOR_MODES, default=Params.preserve_color)
    p.add_argument("--content-layers", nargs="+", default=list(Params.content_layers), metavar="LAYER")
    p.add_argument("--style-layers", nargs="+", default=list(Params.style_layers), metavar="LAYER")
    p.add_argument("--style-layer-weights", type=float, nargs="+", metavar="W")
    p.add_argument("--weights", default=Params.weights, help="caffe, torchvision, or a .pth state dict")
    p.add_argument("--precision", choices=PRECISIONS, default=Params.precision)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--snapshot-every", type=int, metavar="N", help="save the image every N iterations")
    p.add_argument("--snapshot-dir", type=Path, metavar="DIR", help="where snapshots go")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line of stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        return _stylize(args)
    except USER_ERRORS as exc:
        print(f"atelier stylize: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("atelier stylize: interrupted", file=sys.stderr)
        return 130


def _stylize(args: argparse.Namespace) -> int:
    params = Params(
        size=args.size, iterations=args.iterations, scales=args.scales,
        style_weights=_tuple(args.style_weights), content_weight=args.content_weight,
        style_weight=args.style_weight, tv_weight=args.tv_weight, style_scale=args.style_scale,
        init=args.init if args.init in ("content", "noise") else "image", seed=args.seed,
        optimizer=args.optimizer, learning_rate=args.learning_rate, pooling=args.pooling,
        preserve_color=args.preserve_color, weights=args.weights, precision=args.precision,
        content_layers=tuple(args.content_layers), style_layers=tuple(args.style_layers),
        style_layer_weights=_tuple(args.style_layer_weights),
    )
    output = Path(args.output)
    _check_output(output)
    snapshots = _snapshot_dir(args)
    content = open_image(args.content)
    styles = [open_image(s) for s in args.styles]
    init_image = None if args.init in ("content", "noise") else open_image(args.init)

    bar = tqdm(desc="stylize", unit="it", file=sys.stderr, dynamic_ncols=True)

    def callback(it: Iterate) -> None:
        bar.total = it.total
        bar.set_postfix_str(f"scale {it.scale + 1}/{it.scales} {it.width}x{it.height} loss {it.losses['total']:.4g}")
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
        "params": params.to_dict(),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{output}: {result.image.width}x{result.image.height}, {result.iterations} iterations in "
              f"{result.seconds:.1f} s on {result.device}; quality {result.quality}", file=sys.stderr)
    return 0


def _tuple(values: list[float] | None) -> tuple[float, ...] | None:
    return None if values is None else tuple(values)


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
