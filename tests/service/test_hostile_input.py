"""Hostile and broken input: a corpus of bad requests, each a 4xx RFC 9457 problem naming the
fault, never a 500, the service healthy after; and valid-but-unusual images that must work.

Every case is one request built by a function of the test images and settings; `field` is what
the problem must name (in `errors` and `detail`), or for problems about the request as a whole
(401, 405, 413, 415) a phrase the detail must contain.
"""
from __future__ import annotations

import base64
import http.client
import io
import json
import os
import struct
import subprocess
import zlib
from dataclasses import dataclass, field as dc_field
from typing import Any, Callable

import pytest
from PIL import Image
from sqlalchemy import select

from api.stack import free_port, gunicorn_command
from shared.models import JobInput
from tests.service.helpers import PROBLEM, ROOT, TERMINAL, bearer, submit, wait_for, wait_status

# ---- building bad files --------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def picture(size=(48, 36), mode="RGB") -> Image.Image:
    image = Image.frombytes("RGB", size, bytes((i * 37) % 256 for i in range(size[0] * size[1] * 3)))
    return image.convert(mode) if mode != "RGB" else image


PNG = encode(picture(), "PNG")
JPEG = encode(picture(), "JPEG", quality=90)
WEBP = encode(picture(), "WEBP", quality=80)
GIF = encode(picture(), "GIF")


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG header declaring huge dimensions (a decompression bomb's calling card)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def png_bomb() -> bytes:
    """A real deflate bomb: 8000x8000 grey (64 MB of pixels) in ~60 KB."""
    raw = (b"\0" + b"\0" * 8000) * 8000
    ihdr = struct.pack(">IIBBBBB", 8000, 8000, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def gif_claiming(width: int, height: int) -> bytes:
    data = bytearray(GIF)
    data[6:10] = struct.pack("<HH", width, height)          # logical screen
    at = data.index(b"\x2c")                                  # first image descriptor
    data[at + 5:at + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(JPEG)
    at = data.index(b"\xff\xc0")                              # SOF0: length(2) precision(1) height(2) width(2)
    data[at + 5:at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def webp_claiming(width: int, height: int) -> bytes:
    """A lossless WebP whose VP8L header declares width x height (14 bits each)."""
    bits = (width - 1) | ((height - 1) << 14)
    payload = b"\x2f" + struct.pack("<I", bits) + b"\0" * 16
    body = b"WEBP" + b"VP8L" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", len(body)) + body


def png_bad_crc() -> bytes:
    data = bytearray(PNG)
    at = data.index(b"IDAT") + 4
    data[at + 10] ^= 0xFF
    return bytes(data)


def corrupt_middle(data: bytes, start: float = 0.3, fill: bytes = b"\x00") -> bytes:
    at = int(len(data) * start)
    return data[:at] + fill * (len(data) - at - 2) + data[-2:]


# ---- the corpus ------------------------------------------------------------------------------------

@dataclass
class Bad:
    status: int
    field: str                      # named by the problem (errors[].field), or a phrase of its detail
    files: dict[str, Any] = dc_field(default_factory=dict)   # name -> bytes | (bytes, filename) | [..]
    form: dict[str, Any] = dc_field(default_factory=dict)
    headers: dict[str, str] = dc_field(default_factory=dict)
    method: str = "POST"
    path: str = "/v1/jobs"
    body: bytes | None = None       # a raw body instead of multipart
    content_type: str | None = None
    by_detail: bool = False         # `field` is a phrase of the detail (no errors list)


def job_files(content=None, styles=None, **extra) -> dict[str, Any]:
    files = {"content": (PNG if content is None else content, "content.png"),
             "style": [(s, f"style{i}.png") for i, s in enumerate(styles or [PNG])]}
    return files | extra


def params(value: str | dict, **kw) -> Bad:
    text = value if isinstance(value, str) else json.dumps(value)
    return Bad(kw.pop("status", 422), kw.pop("field"), job_files(), {"params": text}, **kw)


def image_case(data: bytes, *, filename="content.png", field="content", status=422) -> Bad:
    if field == "content":
        return Bad(status, field, {"content": (data, filename), "style": [(PNG, "s.png")]})
    return Bad(status, field, {"content": (PNG, "c.png"), "style": [(PNG, "s0.png"), (data, filename)]})


CORPUS: dict[str, Callable[[Any], Bad]] = {
    # broken and disguised images
    "png-truncated-half": lambda s: image_case(PNG[: len(PNG) // 2]),
    "png-signature-only": lambda s: image_case(PNG[:8]),
    "png-header-only": lambda s: image_case(PNG[:33]),
    "png-bad-crc": lambda s: image_case(png_bad_crc()),
    "png-zeroed-data": lambda s: image_case(corrupt_middle(PNG)),
    "jpeg-truncated": lambda s: image_case(JPEG[: len(JPEG) // 3], filename="c.jpg"),
    "jpeg-soi-only": lambda s: image_case(b"\xff\xd8\xff", filename="c.jpg"),
    "jpeg-garbage-after-soi": lambda s: image_case(b"\xff\xd8" + bytes(range(256)) * 4, filename="c.jpg"),
    "webp-truncated": lambda s: image_case(WEBP[: len(WEBP) // 2], filename="c.webp"),
    "webp-riff-header-only": lambda s: image_case(WEBP[:16], filename="c.webp"),
    "webp-corrupt-bitstream": lambda s: image_case(corrupt_middle(WEBP, 0.1, b"\xff"), filename="c.webp"),
    "gif-truncated": lambda s: image_case(GIF[: len(GIF) // 2], filename="c.gif"),
    "gif-header-only": lambda s: image_case(GIF[:13], filename="c.gif"),
    "text-named-png": lambda s: image_case(b"just some text, not an image\n" * 10),
    "html-named-jpg": lambda s: image_case(b"<!doctype html><html><body>hi</body></html>", filename="c.jpg"),
    "svg-named-png": lambda s: image_case(b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'),
    "pdf-named-png": lambda s: image_case(b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF"),
    "gzip-named-png": lambda s: image_case(zlib.compress(PNG)),
    "unsupported-format-ppm": lambda s: image_case(encode(picture(), "PPM"), filename="c.ppm"),
    "zero-byte-content": lambda s: image_case(b""),
    "zero-byte-style": lambda s: Bad(422, "style[0]", {"content": (PNG, "c.png"), "style": [(b"", "s.png")]}),
    "bad-second-style": lambda s: image_case(b"nope", field="style[1]"),
    "png-zero-width": lambda s: image_case(png_claiming(0, 10)),
    # decompression bombs: tiny files, huge dimensions
    "bomb-png-header-100k-square": lambda s: image_case(png_claiming(100_000, 100_000)),
    "bomb-png-header-wide": lambda s: image_case(png_claiming(2**31 - 1, 1)),
    "bomb-png-real-deflate": lambda s: image_case(png_bomb()),
    "bomb-gif-65535-square": lambda s: image_case(gif_claiming(65535, 65535), filename="c.gif"),
    "bomb-jpeg-65500-square": lambda s: image_case(jpeg_claiming(65500, 65500), filename="c.jpg"),
    "bomb-webp-16k-square": lambda s: image_case(webp_claiming(16384, 16384), filename="c.webp"),
    # the shape of the request
    "missing-content": lambda s: Bad(422, "content", {"style": [(PNG, "s.png")]}),
    "missing-style": lambda s: Bad(422, "style", {"content": (PNG, "c.png")}),
    "missing-everything": lambda s: Bad(422, "content", {}, {"params": "{}"}),
    "two-content-files": lambda s: Bad(422, "content", {"content": [(PNG, "a.png"), (PNG, "b.png")], "style": [(PNG, "s.png")]}),
    "too-many-styles": lambda s: Bad(422, "style", job_files(styles=[PNG] * (s.max_styles + 1))),
    "unknown-file-field": lambda s: Bad(422, "mask", job_files(mask=(PNG, "m.png"))),
    "unknown-form-field": lambda s: Bad(422, "priority", job_files(), {"priority": "high"}),
    "content-as-text-field": lambda s: Bad(422, "content", {"style": [(PNG, "s.png")]}, {"content": "iVBORw0KGgo="}),
    "style-as-text-field": lambda s: Bad(422, "style", {"content": (PNG, "c.png")}, {"style": "starry.png"}),
    "params-twice": lambda s: Bad(422, "params", job_files(), {"params": ['{"size": 32}', '{"size": 64}']}),
    # params: malformed JSON
    "params-invalid-json": lambda s: params("{size: 32", status=400, field="params"),
    "params-json-array": lambda s: params("[1, 2, 3]", status=400, field="params"),
    "params-json-string": lambda s: params('"size=32"', status=400, field="params"),
    "params-not-utf8-file": lambda s: Bad(400, "params", job_files(params=(b'{"size": "\xff\xfe"}', "p.json"))),
    "params-deeply-nested": lambda s: params('{"a":' * 5000 + "1" + "}" * 5000, status=400, field="params"),
    "params-5000-digit-number": lambda s: params('{"seed": ' + "9" * 5000 + "}", status=400, field="params"),
    # params: NaN and infinities (Python's json reads them; they are not finite numbers)
    "params-nan": lambda s: params('{"content_weight": NaN}', field="params.content_weight"),
    "params-infinity": lambda s: params('{"style_weight": Infinity}', field="params.style_weight"),
    "params-minus-infinity": lambda s: params('{"tv_weight": -Infinity}', field="params.tv_weight"),
    "params-overflow-float": lambda s: params('{"learning_rate": 1e999}', field="params.learning_rate"),
    "params-nan-in-list": lambda s: params('{"style_weights": [NaN]}', field="params.style_weights"),
    "params-infinity-in-list": lambda s: params('{"style_weights": [Infinity]}', field="params.style_weights"),
    # params: unknown, wrong types, out of range
    "params-unknown-key": lambda s: params({"colour": "blue"}, field="params.colour"),
    "params-unknown-nested": lambda s: params({"size": 32, "extra": {"a": [1]}}, field="params.extra"),
    "params-size-string": lambda s: params({"size": "256"}, field="params.size"),
    "params-size-float": lambda s: params({"size": 64.0}, field="params.size"),
    "params-size-null": lambda s: params({"size": None}, field="params.size"),
    "params-size-list": lambda s: params({"size": [64]}, field="params.size"),
    "params-size-bool": lambda s: params({"size": True}, field="params.size"),
    "params-size-huge": lambda s: params({"size": 10**40}, field="params.size"),
    "params-size-negative": lambda s: params({"size": -64}, field="params.size"),
    "params-iterations-negative": lambda s: params({"iterations": -1}, field="params.iterations"),
    "params-iterations-huge": lambda s: params({"iterations": 2**70}, field="params.iterations"),
    "params-seed-negative": lambda s: params({"seed": -1}, field="params.seed"),
    "params-seed-2-64": lambda s: params({"seed": 2**64}, field="params.seed"),
    "params-snapshot-every-negative": lambda s: params({"snapshot_every": -5}, field="params.snapshot_every"),
    "params-snapshot-every-huge": lambda s: params({"snapshot_every": 10**30}, field="params.snapshot_every"),
    "params-learning-rate-zero": lambda s: params({"learning_rate": 0}, field="params.learning_rate"),
    "params-content-weight-negative": lambda s: params({"content_weight": -1.5}, field="params.content_weight"),
    "params-weights-both-zero": lambda s: params({"content_weight": 0, "style_weight": 0}, field="params.style_weight"),
    "params-scales-zero": lambda s: params({"scales": 0}, field="params.scales"),
    "params-optimizer-number": lambda s: params({"optimizer": 5}, field="params.optimizer"),
    "params-pooling-unknown": lambda s: params({"pooling": "median"}, field="params.pooling"),
    "params-output-format-gif": lambda s: params({"output_format": "gif"}, field="params.output_format"),
    "params-init-path": lambda s: params({"init": "../../etc/passwd"}, field="params.init"),
    "params-style-weights-empty": lambda s: params({"style_weights": []}, field="params.style_weights"),
    "params-style-weights-count": lambda s: params({"style_weights": [1, 2]}, field="params.style_weights"),
    "params-style-weights-negative": lambda s: params({"style_weights": [-1]}, field="params.style_weights"),
    "params-nul-in-key": lambda s: params({"si\u0000ze": 32}, field="params.si\u0000ze"),
    # webhooks
    "webhook-file-url": lambda s: Bad(422, "webhook_url", job_files(), {"webhook_url": "file:///etc/passwd"}),
    "webhook-private-address": lambda s: Bad(422, "webhook_url", job_files(), {"webhook_url": "http://10.1.2.3/hook"}),
    "webhook-events-without-url": lambda s: Bad(422, "webhook_url", job_files(), {"webhook_events": "job.failed"}),
    "webhook-unknown-event": lambda s: Bad(422, "webhook_events", job_files(),
                                           {"webhook_url": "http://93.184.215.14/h", "webhook_events": "job.exploded"}),
    "webhook-url-number-in-params": lambda s: params({"webhook_url": 42}, field="params.webhook_url"),
    # bodies and headers
    "body-over-upload-limit": lambda s: Bad(413, "upload limit", job_files(content=b"\x89PNG" + b"\0" * s.max_upload_bytes),
                                            by_detail=True),
    "json-body": lambda s: Bad(415, "multipart/form-data", body=b'{"content": "x"}', content_type="application/json",
                               by_detail=True),
    "text-body": lambda s: Bad(415, "multipart/form-data", body=b"content=x", content_type="text/plain", by_detail=True),
    "urlencoded-body": lambda s: Bad(415, "multipart/form-data", body=b"content=x&style=y",
                                     content_type="application/x-www-form-urlencoded", by_detail=True),
    "no-body": lambda s: Bad(415, "multipart/form-data", body=b"", by_detail=True),
    "multipart-without-boundary": lambda s: Bad(422, "content", body=b"--x\r\nfoo\r\n--x--\r\n",
                                                content_type="multipart/form-data"),
    "multipart-garbage": lambda s: Bad(422, "content", body=b"\x00\xff" * 500, content_type="multipart/form-data; boundary=zz"),
    "multipart-unterminated": lambda s: Bad(
        422, "content", body=b'--zz\r\nContent-Disposition: form-data; name="content"; filename="c.png"\r\n\r\n' + PNG[:40],
        content_type="multipart/form-data; boundary=zz"),
    "idempotency-key-too-long": lambda s: Bad(400, "Idempotency-Key", job_files(), headers={"Idempotency-Key": "k" * 5000}),
    "idempotency-key-empty": lambda s: Bad(400, "Idempotency-Key", job_files(), headers={"Idempotency-Key": '""'}),
    "idempotency-key-control-chars": lambda s: Bad(400, "Idempotency-Key", job_files(), headers={"Idempotency-Key": "a\x00b\x07"}),
    "authorization-64k": lambda s: Bad(401, "API key", job_files(), headers={"Authorization": "Bearer " + "x" * 65536},
                                       by_detail=True),
    "authorization-non-ascii": lambda s: Bad(401, "API key", job_files(), headers={"Authorization": "Bearer atl_ключ"},
                                             by_detail=True),
    "authorization-basic": lambda s: Bad(401, "Bearer", job_files(), headers={"Authorization": "Basic YTpi"}, by_detail=True),
    "content-type-64k": lambda s: Bad(415, "multipart/form-data", body=b"x", content_type="text/" + "x" * 65536, by_detail=True),
    # other routes
    "put-jobs": lambda s: Bad(405, "not allowed", method="PUT", by_detail=True),
    "list-limit-negative": lambda s: Bad(400, "limit", method="GET", path="/v1/jobs?limit=-1"),
    "list-limit-huge": lambda s: Bad(400, "limit", method="GET", path="/v1/jobs?limit=" + "9" * 100),
    "list-limit-unicode-digits": lambda s: Bad(400, "limit", method="GET", path="/v1/jobs?limit=%D9%A3"),
    "list-status-unknown": lambda s: Bad(400, "status", method="GET", path="/v1/jobs?status=exploded"),
    "list-cursor-garbage": lambda s: Bad(400, "cursor", method="GET", path="/v1/jobs?cursor=%00%ff!!"),
    "list-cursor-wrong-json": lambda s: Bad(400, "cursor", method="GET", path="/v1/jobs?cursor=eyJhIjogMX0"),
    # cursors edited by hand: each field of a real one's JSON made wrong in its own way
    "list-cursor-date-without-zone": lambda s: cursor_case("2024-01-01T00:00:00", JOB_ID),
    "list-cursor-date-before-year-1-in-utc": lambda s: cursor_case("0001-01-01T00:00:00+01:00", JOB_ID),
    "list-cursor-date-after-9999-in-utc": lambda s: cursor_case("9999-12-31T23:59:59-05:00", JOB_ID),
    "list-cursor-id-a-number": lambda s: cursor_case("2024-01-01T00:00:00+00:00", 1),
    "list-cursor-id-with-nul": lambda s: cursor_case("2024-01-01T00:00:00+00:00", "a\x00b"),
    "job-id-10k": lambda s: Bad(404, "no job", method="GET", path="/v1/jobs/" + "a" * 10_000, by_detail=True),
    "job-id-nul": lambda s: Bad(404, "no job", method="GET", path="/v1/jobs/ab%00cd", by_detail=True),
    "job-id-non-ascii": lambda s: Bad(404, "no job", method="GET", path="/v1/jobs/%E2%98%83", by_detail=True),
    "job-id-path-traversal": lambda s: Bad(404, "not found", method="GET", path="/v1/jobs/..%2F..%2Fetc%2Fpasswd/result",
                                           by_detail=True),
    "snapshot-iteration-huge": lambda s: Bad(404, "no job", method="GET",
                                             path="/v1/jobs/00000000-0000-0000-0000-000000000000/snapshots/" + "9" * 40,
                                             by_detail=True),
    "cancel-unknown-job-nul": lambda s: Bad(404, "no job", method="POST", path="/v1/jobs/%00/cancel", by_detail=True),
    "redeliver-unknown-nul": lambda s: Bad(404, "delivery", method="POST", path="/v1/deliveries/msg_%00/redeliver",
                                           by_detail=True),
}


JOB_ID = "00000000-0000-0000-0000-000000000000"


def cursor_case(created_at: str, job_id: object) -> Bad:
    """A list request with a cursor shaped like the API's (base64 of `[created_at, id]`) holding these."""
    cursor = base64.urlsafe_b64encode(json.dumps([created_at, job_id]).encode()).decode()
    return Bad(400, "cursor", method="GET", path=f"/v1/jobs?cursor={cursor}")


def build(case: Bad) -> dict[str, Any]:
    if case.body is not None:
        return {"data": case.body, "content_type": case.content_type}
    if not case.files and not case.form:
        return {}
    data: dict[str, Any] = {}
    for name, value in case.files.items():
        items = value if isinstance(value, list) else [value]
        data[name] = [(io.BytesIO(content), filename) for content, filename in items]
    for name, value in case.form.items():
        data[name] = value
    return {"data": data, "content_type": "multipart/form-data"}


def test_the_corpus_is_large_enough():
    assert len(CORPUS) >= 50


@pytest.mark.parametrize("name", list(CORPUS))
def test_bad_request_is_a_named_4xx_problem(client, auth, settings, images, name):
    case = CORPUS[name](settings)
    headers = auth | case.headers
    response = client.open(case.path, method=case.method, headers=headers, **build(case))
    text = response.get_data(as_text=True)
    assert response.status_code == case.status, f"{name}: {response.status_code} {text[:500]}"
    assert response.mimetype == PROBLEM, text[:200]
    body = response.get_json()
    assert body["status"] == case.status and body["title"] and body["detail"]
    if case.by_detail:
        assert case.field.lower() in body["detail"].lower(), body
    else:
        assert case.field in [e["field"] for e in body["errors"]], body
        assert case.field in body["detail"], body
    # healthy after: alive, and a good submission still works
    assert client.get("/healthz").status_code == 200
    assert submit(client, auth, images, {"size": 32, "iterations": 2}).status_code == 202


def test_huge_snapshot_iteration_of_a_real_job_is_404(client, auth, images):
    job = submit(client, auth, images, {"size": 32, "iterations": 2}).get_json()["id"]
    for iteration in ("9" * 40, str(2**63), str(2**31)):
        response = client.get(f"/v1/jobs/{job}/snapshots/{iteration}", headers=auth)
        assert response.status_code == 404 and response.mimetype == PROBLEM
        assert "no snapshot" in response.get_json()["detail"]
    assert client.get("/healthz").status_code == 200


# ---- valid but unusual images: accepted, and used the right way up and in the right colours ----------

def animated_gif() -> bytes:
    frames = [Image.new("RGB", (40, 30), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def png16() -> bytes:
    image = Image.new("I;16", (40, 30))
    image.putdata([(x * 1600) for y in range(30) for x in range(40)])
    return encode(image, "PNG")


def cmyk_jpeg() -> bytes:
    return encode(Image.new("CMYK", (40, 30), (255, 0, 0, 0)), "JPEG", quality=95)   # pure cyan


def palette_png(transparent: bool = False) -> bytes:
    image = picture((40, 30)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return encode(image, "PNG", **({"transparency": 0} if transparent else {}))


def exif_rotated_jpeg() -> bytes:
    """Stored 48 wide x 24 tall, left half red; EXIF Orientation 6: display rotated 90° clockwise,
    i.e. 24 wide x 48 tall with red on top."""
    image = Image.new("RGB", (48, 24), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 24, 24))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(image, "JPEG", quality=95, exif=exif.tobytes())


UNUSUAL = {
    "animated.gif": animated_gif,
    "16bit.png": png16,
    "cmyk.jpg": cmyk_jpeg,
    "palette.png": palette_png,
    "palette-transparent.png": lambda: palette_png(True),
    "exif-rotated.jpg": exif_rotated_jpeg,
    "grey-alpha.png": lambda: encode(picture((40, 30), "LA"), "PNG"),
    "alpha.webp": lambda: encode(picture((40, 30), "RGBA"), "WEBP", lossless=True),
}


def test_unusual_images_decode_upright_and_in_colour():
    from shared.images import open_image
    upright = open_image(exif_rotated_jpeg())
    assert upright.size == (24, 48)
    top, bottom = upright.getpixel((12, 6)), upright.getpixel((12, 42))
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60   # red on top, as displayed
    cyan = open_image(cmyk_jpeg()).getpixel((20, 15))
    assert cyan[0] < 40 and cyan[1] > 215 and cyan[2] > 215
    grey = open_image(png16())
    assert grey.mode == "RGB" and grey.getpixel((0, 0)) == (0, 0, 0) and grey.getpixel((39, 0))[0] > 230
    first = open_image(animated_gif())
    assert first.getpixel((5, 5))[0] > 200 and first.getpixel((5, 5))[1] < 60      # the first frame
    for name, make in UNUSUAL.items():
        assert open_image(make()).mode == "RGB", name


def test_unusual_images_and_filenames_are_accepted(client, auth, settings, app):
    odd_names = {"path": "../../../etc/passwd.png", "windows": "C:\\Users\\x\\..\\evil.png",
                 "non-ascii": "Стиль — 星空 🎨.png", "nul": "a\x00b\x07.png", "long": "x" * 1000 + ".png"}
    for index, (name, make) in enumerate(UNUSUAL.items()):
        data = {"content": (io.BytesIO(make()), name), "style": [(io.BytesIO(make()), list(odd_names.values())[index % 5])],
                "params": json.dumps({"size": 32, "iterations": 2, "seed": index})}
        response = client.post("/v1/jobs", data=data, headers=auth, content_type="multipart/form-data")
        assert response.status_code == 202, (name, response.get_data(as_text=True))
        with app.extensions["atelier"].db.session() as session:
            names = list(session.scalars(select(JobInput.filename).where(JobInput.job_id == response.get_json()["id"])
                                         .order_by(JobInput.position)))
        assert names[0] == name
        stored = names[1]
        assert "/" not in stored and "\\" not in stored and stored.isprintable() and 0 < len(stored) <= 255
    assert client.get("/healthz").status_code == 200


def test_unusual_images_run_and_exif_rotation_is_followed(live_client, live_auth):
    """Through the real worker: every unusual image works as content and as style; the EXIF-rotated
    content (stored landscape, displayed portrait) gives a portrait result."""
    jobs = {}
    for name, make in UNUSUAL.items():
        data = {"content": (io.BytesIO(make()), name), "style": [(io.BytesIO(make()), name)],
                "params": json.dumps({"size": 32, "iterations": 2, "scales": 1, "snapshot_every": 0})}
        response = live_client.post("/v1/jobs", data=data, headers=live_auth, content_type="multipart/form-data")
        assert response.status_code == 202, (name, response.get_data(as_text=True))
        jobs[name] = response.get_json()["id"]
    for name, job_id in jobs.items():
        done = wait_status(live_client, live_auth, job_id, TERMINAL, timeout=180)
        assert done["status"] == "succeeded", (name, done["error"])
        result = Image.open(io.BytesIO(live_client.get(done["result"]["url"], headers=live_auth).data))
        assert result.size == (done["result"]["width"], done["result"]["height"])
        if name == "exif-rotated.jpg":
            assert result.size == (16, 32), result.size        # portrait, as displayed
        else:
            assert result.width > result.height, (name, result.size)   # the others are 40x30 or 48x36 landscape


def test_very_long_headers_under_gunicorn(settings, api_key, tmp_path):
    """Under the production server, a header over gunicorn's 8190-byte field limit never reaches
    the app: gunicorn answers 431 itself (its own HTML body, not a problem document), and the
    service stays healthy. Below that limit the app answers (401 problem for a long bogus key)."""
    port = free_port()
    log = open(tmp_path / "gunicorn.log", "wb")
    server = subprocess.Popen(gunicorn_command(f"127.0.0.1:{port}", workers=1), cwd=ROOT,
                              env=os.environ | settings.to_env(), stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)

    def get(path: str, headers: dict) -> tuple[int, str, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            return response.status, response.getheader("Content-Type") or "", response.read()
        finally:
            connection.close()

    try:
        wait_for(lambda: _up(get), timeout=60, what="gunicorn")
        for name, value in (("X-Junk", "x" * 20_000), ("Authorization", "Bearer " + "x" * 9000),
                            ("Idempotency-Key", "k" * 65_536)):
            status, _, _ = get("/v1/jobs", {name: value})
            assert status == 431, (name, status)
        status, content_type, body = get("/v1/jobs", {"Authorization": "Bearer " + "x" * 8000})
        assert status == 401 and content_type == PROBLEM, body[:200]
        assert get("/healthz", {})[0] == 200
        assert get("/v1/jobs", bearer(api_key))[0] == 200
    finally:
        server.terminate()
        server.wait(20)
        log.close()


def _up(get) -> bool:
    try:
        return get("/healthz", {})[0] == 200
    except OSError:
        return False
