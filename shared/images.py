"""Safe image decoding shared by the API (upload validation) and the engine.

Everything a user hands us goes through :func:`open_image`, so truncated files,
decompression bombs, odd modes and EXIF rotation are handled in exactly one place.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 50_000_000  # ~7000x7000: far above any output size we allow
ALLOWED_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"})


class ImageError(ValueError):
    """A user-supplied image cannot be used; the message says why."""


def open_image(source: str | Path | bytes | BinaryIO, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode, validate and normalise an image to 8-bit RGB, upright per its EXIF tag.

    The pixel limit is checked from the header, before any pixel data is decoded.
    """
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(source)  # reads the header only
    except FileNotFoundError:
        raise ImageError(f"file not found: {source}") from None
    except IsADirectoryError:
        raise ImageError(f"not a file: {source}") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _describe(exc) from None
    except OSError as exc:
        raise ImageError(f"corrupt or truncated image: {exc}") from None
    if img.format not in ALLOWED_FORMATS:
        raise ImageError(f"unsupported image format {img.format!r}; use PNG, JPEG or WebP")
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageError("image has zero width or height")
    if width * height > max_pixels:
        raise ImageError(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    try:
        img.seek(0)  # animated images: the first frame
        img.load()
        img = ImageOps.exif_transpose(img)
        return _to_rgb(img)
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"corrupt or truncated image: {exc}") from None


def _describe(exc: Exception) -> ImageError:
    if isinstance(exc, UnidentifiedImageError):
        return ImageError("not an image, or an image format we cannot read")
    return ImageError(f"image too large (decompression bomb guard): {exc}")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Flatten alpha onto white and bring every mode (P, L, I;16, CMYK, LA, ...) to RGB."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        img = img.point(lambda v: v / 256).convert("L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")
