"""Jobs of one shape run as one batch (worker.engine.loop): each ends as it would alone, within
float tolerance; one that stops leaves the others running; shapes must match."""
from __future__ import annotations

import pytest

from shared.params import Params
from worker.engine import Member, stylize, stylize_batch
from worker.engine.images import to_tensor

TINY = dict(size=48, iterations=8, scales=2)


def close(a, b) -> float:
    """Mean absolute difference of two images, 0-1 scale."""
    return float((to_tensor(a.image) - to_tensor(b.image)).abs().mean())


def test_each_job_of_a_batch_ends_as_it_would_alone(content, style, style2):
    # each job's own style balance (Transfer._style_balance) holds in the batch; the tolerance is
    # float reassociation in batched convolutions, which L-BFGS carries through 8 steps (about one
    # level of 255 on average)
    params = [Params(**TINY), Params(**TINY, style_weight=12.0), Params(**TINY, init="noise", seed=3)]
    styles = [[style], [style2], [style, style2]]
    alone = [stylize(content, s, p, device="cpu") for s, p in zip(styles, params)]
    seen: list[list[int]] = [[], [], []]
    batch = stylize_batch([Member(content, s, p, callback=lambda it, j=j: seen[j].append(it.iteration))
                           for j, (s, p) in enumerate(zip(styles, params))], device="cpu")
    for solo, together, iterations in zip(alone, batch, seen):
        assert together.iterations == solo.iterations == 8 and not together.stopped
        assert iterations == list(range(1, 9))
        assert close(solo, together) < 5e-3, close(solo, together)
        assert together.quality == pytest.approx(solo.quality, abs=5e-3)
        assert together.losses["total"] == pytest.approx(solo.losses["total"], rel=1e-2)
        assert together.quality is not None
    assert close(batch[0], batch[1]) > 1e-2  # and they are three different jobs


def test_each_adam_job_of_a_batch_steps_at_its_own_learning_rate(content, style):
    """The learning rate is not part of `batch_key`: jobs that differ in it batch, each at its own."""
    params = [Params(**TINY, optimizer="adam", learning_rate=rate) for rate in (0.02, 0.2)]
    alone = [stylize(content, [style], p, device="cpu") for p in params]
    batch = stylize_batch([Member(content, [style], p) for p in params], device="cpu")
    for solo, together in zip(alone, batch):
        assert close(solo, together) < 1e-3, close(solo, together)
    assert close(batch[0], batch[1]) > 1e-2


def test_a_job_that_stops_leaves_the_others_running(content, style):
    ended = []  # each job's outcome, told as soon as it is known
    members = [Member(content, [style], Params(**TINY), callback=lambda it: it.iteration == 3,
                      ended=lambda outcome: ended.append(outcome)),
               Member(content, [style], Params(**TINY, seed=1, init="noise"), ended=lambda outcome: ended.append(outcome))]
    stopped, finished = stylize_batch(members, device="cpu")
    assert stopped.stopped and stopped.iterations == 3 and stopped.checkpoint["iteration"] == 3
    assert not finished.stopped and finished.iterations == 8 and finished.quality is not None
    assert ended == [stopped, finished]


def test_a_job_whose_callback_finds_its_loss_diverged_leaves_the_others_running(content, style):
    """A worker's progress report raises FloatingPointError on a loss gone non-finite between the
    loop's checks (`worker.progress.progress_of`): that job ends so, alone, as if the loop had seen it."""
    def diverged(it) -> None:
        if it.iteration == 3:
            raise FloatingPointError(f"the loss diverged by iteration {it.iteration}")

    ended = []
    members = [Member(content, [style], Params(**TINY), callback=diverged, ended=ended.append),
               Member(content, [style], Params(**TINY, seed=1, init="noise"), ended=ended.append)]
    error, finished = stylize_batch(members, device="cpu")
    assert isinstance(error, FloatingPointError) and "iteration 3" in str(error)
    assert not finished.stopped and finished.iterations == 8 and finished.quality is not None
    assert ended == [error, finished]


def test_jobs_of_different_shapes_are_refused(content, style):
    with pytest.raises(ValueError, match="different shapes"):
        stylize_batch([Member(content, [style], Params(**TINY)), Member(content, [style], Params(size=32, iterations=8))],
                      device="cpu")
