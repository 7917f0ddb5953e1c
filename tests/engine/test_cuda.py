"""The engine's CUDA paths, run only where a CUDA GPU is (skipped cleanly elsewhere; `bench/gpu.sh`
runs them on one): the bf16 fast path against fp32, seeded determinism, checkpoint resume, the
peak memory report and an iteration that never waits for the device, on Tübingen x The Starry
Night at 256 px."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from shared.images import open_image
from shared.params import Params
from worker.engine import stylize
from worker.engine.images import to_tensor

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
SAMPLES = Path(__file__).resolve().parents[2] / "samples"


@pytest.fixture(scope="module")
def pair():
    return open_image(SAMPLES / "tubingen.jpg"), open_image(SAMPLES / "starry_night.jpg")


def test_the_bf16_fast_path_scores_within_2_percent_of_fp32(pair):
    content, style = pair
    fp32 = stylize(content, [style], Params(size=256, precision="fp32"), device="cuda")
    bf16 = stylize(content, [style], Params(size=256, precision="bf16"), device="cuda")
    for score in ("style_distance", "content_distance"):
        assert bf16.quality[score] == pytest.approx(fp32.quality[score], rel=0.02), (score, bf16.quality, fp32.quality)


def test_the_same_seed_gives_the_same_image_on_cuda(pair):
    content, style = pair
    params = Params(size=256, iterations=40, init="noise", seed=5)
    first, second = (stylize(content, [style], params, device="cuda") for _ in range(2))
    assert first.image.tobytes() == second.image.tobytes()
    other = stylize(content, [style], Params(size=256, iterations=40, init="noise", seed=6), device="cuda")
    assert other.image.tobytes() != first.image.tobytes()


def test_a_checkpoint_resumes_on_cuda_as_if_never_stopped(pair):
    content, style = pair
    params = Params(size=256, scales=2, iterations=30)
    straight = stylize(content, [style], params, device="cuda")
    stopped = stylize(content, [style], params, device="cuda", callback=lambda it: it.iteration == 20)
    assert stopped.stopped and all(t.device.type == "cpu" for t in [stopped.checkpoint["image"]])
    resumed = stylize(content, [style], params, device="cuda", checkpoint=stopped.checkpoint)
    assert resumed.iterations == 30
    assert float((to_tensor(resumed.image) - to_tensor(straight.image)).abs().max()) <= 2 / 255


def test_peak_memory_is_the_allocators_peak(pair):
    content, style = pair
    result = stylize(content, [style], Params(size=512, iterations=5, scales=1), device="cuda")
    assert result.device.startswith("cuda")
    total_mb = torch.cuda.get_device_properties(0).total_memory / 2**20
    assert 100 < result.peak_memory_mb < total_mb
    assert result.peak_memory_mb == torch.cuda.max_memory_allocated() / 2**20


def test_an_iteration_never_waits_for_the_device(pair):
    """CUDA's own count of synchronising calls (`torch.cuda.set_sync_debug_mode`) is the same for
    10 iterations as for 40 when nothing asks for the losses: setup, the stage's end and the
    report wait for the device, no iteration does."""
    content, style = pair
    stylize(content, [style], Params(size=256, scales=1, iterations=2), device="cuda")  # weights, style cache
    counts = []
    for iterations in (10, 40):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                stylize(content, [style], Params(size=256, scales=1, iterations=iterations), device="cuda",
                        callback=lambda it: None)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(w.message) for w in caught))
    assert counts[0] == counts[1] > 0, counts
