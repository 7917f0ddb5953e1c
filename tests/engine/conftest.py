"""Tiny inputs for engine tests (the project's sample images shrunk to a few dozen pixels), the
devices a test may run on, and the loop through torch.compile."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from shared.images import open_image
from worker.engine import loop

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def _small(name: str, longest: int) -> Image.Image:
    image = open_image(SAMPLES / name)
    image.thumbnail((longest, longest), Image.LANCZOS)
    return image


@pytest.fixture(scope="session")
def content() -> Image.Image:
    return _small("tubingen.jpg", 64)


@pytest.fixture(scope="session")
def style() -> Image.Image:
    return _small("starry_night.jpg", 64)


@pytest.fixture(scope="session")
def style2() -> Image.Image:
    return _small("the_scream.jpg", 64)


@pytest.fixture(scope="session")
def pair() -> tuple[Image.Image, Image.Image]:
    """Tübingen and The Starry Night whole: the benchmarks' pair, for the tests that judge quality."""
    return open_image(SAMPLES / "tubingen.jpg"), open_image(SAMPLES / "starry_night.jpg")


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU")])])
def device(request) -> str:
    """Each device a test runs on: the CPU here, CUDA too where a GPU is (`-m cuda`, bench/gpu.sh)."""
    return request.param


@pytest.fixture
def compiled(monkeypatch):
    """The loop with `COMPILE` on, from a fresh Dynamo (nothing compiled, nothing counted) and
    left without what it compiled."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    monkeypatch.setattr(loop, "COMPILE", True)
    yield torch._dynamo.utils.counters
    torch._dynamo.reset()
