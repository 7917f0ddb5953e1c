"""A running job's ETA (`worker.progress`): the model's time for what is left of the job, at the
pace the run has kept against the model since its first iteration."""
from __future__ import annotations

import pytest

from shared.capacity import Timeline
from worker.engine import Iterate
from worker.progress import eta_seconds, progress_of


def at(iteration: int, per_second: float, total: int = 20, loss: float = 1.0) -> Iterate:
    return Iterate(scale=0, scales=2, width=64, height=48, iteration=iteration, total=total, elapsed=9.0,
                   iterations_per_second=per_second, rate_from=1, _losses=lambda: {"style": 0.5, "total": loss},
                   _image=lambda: None, _checkpoint=lambda: {})


# two stages of 10 iterations; the second's four times dearer each, its style passes 20 s, then 2 s to the end
TIMELINE = Timeline(stages=((10, 1.0, 0.0), (10, 4.0, 20.0)), end=2.0)


def test_the_stages_ahead_are_dearer_than_the_rate_so_far_says():
    it = at(6, per_second=0.5)  # 5 iterations since the first took 10 s: twice the model's 5 s
    assert eta_seconds(it, TIMELINE) == pytest.approx(2 * (4 * 1.0 + 20.0 + 10 * 4.0 + 2.0))
    assert eta_seconds(it, None) == pytest.approx(14 / 0.5)  # the rate alone promises it far sooner


def test_no_eta_before_there_is_a_rate():
    assert eta_seconds(at(1, per_second=0.0), TIMELINE) is None
    assert progress_of(at(1, per_second=0.0), None, TIMELINE)["eta_seconds"] is None


def test_the_progress_carries_the_eta_rounded():
    progress = progress_of(at(6, per_second=0.5), 3, TIMELINE)
    assert progress["eta_seconds"] == 132.0 and progress["resumed_from"] == 3 and progress["percent"] == 30.0


@pytest.mark.parametrize("loss", [float("nan"), float("inf"), float("-inf")])
def test_a_loss_that_is_not_finite_is_never_progress_but_divergence(loss):
    """PostgreSQL's json refuses NaN and infinity, and they are not JSON to a viewer of the events:
    the job diverged, as the engine says once it checks (a FloatingPointError ends it `diverged`)."""
    with pytest.raises(FloatingPointError, match="the loss diverged by iteration 6"):
        progress_of(at(6, per_second=0.5, loss=loss), None, TIMELINE)
