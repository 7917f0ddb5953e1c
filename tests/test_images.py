"""`open_image`: the one gate every user image passes, for the CLI and the API alike."""
import io

import numpy as np
import pytest
from PIL import Image

from shared.images import ImageError, open_image


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kw)
    return buffer.getvalue()


def test_sixteen_bit_greyscale_becomes_rgb_with_the_right_levels():
    array = np.full((8, 8), 65535 // 2, dtype=np.uint16)
    image = open_image(encode(Image.fromarray(array), "PNG"))
    assert image.mode == "RGB" and abs(image.getpixel((0, 0))[0] - 127) <= 1


def test_cmyk_jpeg_becomes_rgb():
    image = open_image(encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"))
    r, g, b = image.getpixel((4, 4))
    assert image.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_palette_transparency_and_alpha_are_flattened_on_white():
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([0, 0, 0] * 256)
    assert open_image(encode(palette, "PNG", transparency=0)).getpixel((0, 0)) == (255, 255, 255)
    assert open_image(encode(Image.new("RGBA", (8, 8), (255, 0, 0, 0)), "PNG")).getpixel((0, 0)) == (255, 255, 255)
    assert open_image(encode(Image.new("LA", (8, 8), (0, 255)), "PNG")).getpixel((0, 0)) == (0, 0, 0)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (20, 10), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    assert open_image(encode(image, "JPEG", exif=exif.tobytes())).size == (10, 20)


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    r, _, b = open_image(data).getpixel((0, 0))
    assert r > 200 and b < 50


@pytest.mark.parametrize("data, message", [
    (b"", "not an image"),
    (b"just some text", "not an image"),
    (encode(Image.new("RGB", (64, 64), (1, 2, 3)), "PNG")[:60], "truncated"),
    (encode(Image.new("RGB", (64, 64)), "JPEG")[:200], "corrupt or truncated"),
    (encode(Image.new("RGB", (64, 64)), "WEBP")[:40], "corrupt or truncated"),
    (encode(Image.new("L", (3000, 3000)), "PNG"), "limit"),
    (encode(Image.new("RGB", (8, 8)), "PDF"), "not an image"),
])
def test_bad_images_raise_a_clear_error(data, message):
    with pytest.raises(ImageError, match=message):
        open_image(data, max_pixels=4_000_000)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        open_image(tmp_path / "nothing.png")
    with pytest.raises(ImageError, match="not a file"):
        open_image(tmp_path)
