"""The loop with its network passes and losses through torch.compile (`loop.COMPILE`, an option
that bench/gpu.py measures on a GPU): compiled iterations take the eager ones' steps, in a batch
that a job leaves too (a new batch size: compiled again)."""
from __future__ import annotations

import pytest
import torch

from shared.params import Params
from worker.engine import Member, stylize_batch
from worker.engine.images import to_tensor


def batch(content, style, style2) -> list:
    """Two jobs; the second stops at its third iteration, the first runs on alone. The network
    runs to relu2_2 only (a quarter of its layers, the same kinds), since compiling it whole for
    the CPU took most of a minute and a half with Inductor's cache empty."""
    params = Params(size=32, scales=1, iterations=5, precision="fp32",  # fp32: see the tolerances below
                    style_layers=("relu1_1", "relu2_1"), content_layers=("relu2_2",))
    return stylize_batch([Member(content, [style], params),
                          Member(content, [style2], params, callback=lambda it: it.iteration == 3)], device="cpu")


def test_compiled_iterations_take_the_eager_steps(content, style, style2, request):
    eager = batch(content, style, style2)
    counters = request.getfixturevalue("compiled")  # after the eager run
    compiled = batch(content, style, style2)
    assert [r.iterations for r in compiled] == [5, 3] and compiled[1].stopped
    assert counters["stats"]["unique_graphs"] == 2  # one batch size each, no graph breaks
    assert not counters["graph_break"]
    for ours, theirs in zip(compiled, eager):
        # fp32, the same operations in another order: L-BFGS carries a 1e-8 difference in the
        # gradient to a few 1e-6 in 5 steps
        assert ours.losses == pytest.approx(theirs.losses, rel=1e-4)
        assert float((to_tensor(ours.image) - to_tensor(theirs.image)).abs().max()) <= 1 / 255
