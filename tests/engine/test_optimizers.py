"""The batched optimisers (worker.engine.optimizers): each row takes torch's own steps, rows never
touch each other, a row's state survives a checkpoint and a split, a step that makes the loss jump
is taken back, and a step reads nothing back from the device (checked on the meta device, where
any read raises)."""
from __future__ import annotations

import math

import pytest
import torch

from worker.engine.optimizers import HISTORY, LBFGS, Adam

ROWS, PIXELS = 3, 40


def problems() -> tuple[list[torch.Tensor], torch.Tensor]:
    """A smooth non-quadratic loss per row (a different one each) and a start."""
    generator = torch.Generator().manual_seed(0)
    curvatures = []
    for _ in range(ROWS):
        a = torch.randn(PIXELS, PIXELS, generator=generator, dtype=torch.float64)
        curvatures.append(a @ a.T / PIXELS + 0.1 * torch.eye(PIXELS, dtype=torch.float64))
    return curvatures, torch.randn(ROWS, PIXELS, generator=generator, dtype=torch.float64)


def loss(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return 0.5 * x @ a @ x + 0.1 * x.pow(4).sum()


def torch_path(x: torch.Tensor, a: torch.Tensor, steps: int, make) -> list[torch.Tensor]:
    """torch's optimiser on one row: the point after each step."""
    x = x.clone().requires_grad_(True)
    optimizer, path = make(x), []
    for _ in range(steps):
        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            value = loss(x, a)
            value.backward()
            return value
        optimizer.step(closure)
        path.append(x.detach().clone())
    return path


def batched_step(optimizer, x: torch.Tensor, curvatures: list[torch.Tensor]) -> None:
    """One step of every row, given each row's loss as the loop gives it (L-BFGS's safeguard)."""
    leaf = x.clone().requires_grad_(True)
    losses = torch.stack([loss(leaf[row], a) for row, a in enumerate(curvatures)])
    losses.sum().backward()
    optimizer.step(x, leaf.grad, losses.detach())


def torch_lbfgs(x: torch.Tensor) -> torch.optim.LBFGS:
    return torch.optim.LBFGS([x], lr=1, max_iter=1, history_size=HISTORY, tolerance_grad=-1, tolerance_change=-1)


@pytest.mark.parametrize("ours, theirs", [(LBFGS, torch_lbfgs), (lambda x: Adam(x, 0.05),
                                                                 lambda x: torch.optim.Adam([x], lr=0.05))])
def test_each_row_takes_the_steps_torch_takes_alone(ours, theirs, device):
    curvatures, start = problems()
    curvatures, start = [a.to(device) for a in curvatures], start.to(device)
    steps = HISTORY + 10  # past the point where the oldest pairs are dropped
    expected = [torch_path(start[row], a, steps, theirs) for row, a in enumerate(curvatures)]
    x = start.clone()
    optimizer = ours(x)
    for step in range(steps):
        batched_step(optimizer, x, curvatures)
        for row in range(ROWS):
            assert torch.allclose(x[row], expected[row][step], rtol=1e-9, atol=1e-9), (step, row)
    assert all(loss(x[row], a) < 0.5 * loss(start[row], a) for row, a in enumerate(curvatures))


def test_a_finer_stage_starts_from_the_curvature_the_coarser_one_ended_with():
    """L-BFGS on a/2 ‖x‖² learns H₀ = 1/a. A finer stage whose loss is a mean over 4x the pixels
    (a/4 per pixel) starts from 4/a and so reaches its minimum in its first step, where torch's
    own first step, 1/‖g‖₁ long, barely moves. A row whose coarser stage measured no curvature
    (it took one step) starts as torch does."""
    a = 3.0
    coarse = torch.ones(2, 4, dtype=torch.float64)
    previous = LBFGS(coarse)
    previous.step(coarse, a * coarse)
    one_step = LBFGS(coarse.clone())
    one_step.step(coarse.clone(), a * coarse)
    previous.step(coarse, a * coarse)
    for seeded_from, moved in ((previous, 0.0), (one_step, 1.0), (None, 1.0)):
        fine = torch.ones(2, 16, dtype=torch.float64)
        optimizer = LBFGS(fine, seeded_from)
        optimizer.step(fine, a / 4 * fine)
        assert fine.abs().max().item() == pytest.approx(moved, abs=0.1), seeded_from


@pytest.mark.parametrize("make, restore", [(LBFGS, LBFGS.restore),
                                           (lambda x: Adam(x, 0.05), lambda x, state: Adam.restore(x, 0.05, state))])
@pytest.mark.parametrize("stop_after", [1, 5, HISTORY + 3])
def test_a_row_split_off_or_restored_from_its_state_goes_on_as_if_never_touched(make, restore, stop_after):
    curvatures, start = problems()
    straight = start.clone()
    optimizer = make(straight)
    for _ in range(stop_after + 6):
        batched_step(optimizer, straight, curvatures)

    x = start.clone()
    optimizer = make(x)
    for _ in range(stop_after):
        batched_step(optimizer, x, curvatures)
    state = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in optimizer.state(1).items()}
    split = x[[2, 1]].clone()
    optimizer.keep(torch.tensor([2, 1]))
    alone = x[1:2].clone()
    restored = restore(alone, state)
    for _ in range(6):
        batched_step(optimizer, split, [curvatures[2], curvatures[1]])
        batched_step(restored, alone, [curvatures[1]])
    assert torch.equal(split[0], straight[2]) and torch.equal(split[1], straight[1])
    assert torch.allclose(alone[0], straight[1], rtol=0, atol=1e-12)


def test_a_pair_without_positive_curvature_is_not_used():
    """Along a concave direction sᵀy < 0: the pair must not enter H (it would stop being positive
    definite and the step would climb); the row goes on along −H₀g."""
    x = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    optimizer = LBFGS(x)
    optimizer.step(x, torch.tensor([[1.0, 1.0]], dtype=torch.float64))
    before = x.clone()
    optimizer.step(x, torch.tensor([[2.0, 2.0]], dtype=torch.float64))  # the gradient grew along -g: concave
    assert optimizer.rho[0, 0] == 0 and optimizer.h0[0] == 1
    assert torch.equal(x, before - 2.0)


def test_a_step_that_makes_the_loss_jump_is_taken_back_shorter():
    """Row 0's second point has 15 times its first loss: it goes back to its first point and
    takes the part of that step where the parabola through the two losses and the slope at the
    start has its minimum; row 1's loss grew by half: kept, its step is torch's; row 2's gradient
    is not finite: taken back too, and nothing of it enters its history."""
    x0 = torch.tensor([[1.0, 2.0]] * 3, dtype=torch.float64)
    g0, g1 = x0 / 2, torch.tensor([[3.0, -1.0], [3.0, -1.0], [math.nan, 1.0]], dtype=torch.float64)
    x, plain = x0.clone(), x0.clone()
    ours, torchs = LBFGS(x), LBFGS(plain)
    ours.step(x, g0, torch.full((3,), 0.1, dtype=torch.float64))
    torchs.step(plain, g0)
    d0 = x - x0
    ours.step(x, g1, torch.tensor([1.5, 0.15, 0.1], dtype=torch.float64))
    torchs.step(plain, g1)
    slope = float(g0[0] @ d0[0])
    part = min(0.5, max(0.1, -slope / (2 * (1.5 - 0.1 - slope))))
    assert 0.1 < part < 0.5  # the parabola's minimum, not a bound
    assert torch.allclose(x[0], x0[0] + part * d0[0], rtol=0, atol=1e-12)
    assert torch.equal(x[1], plain[1])
    assert torch.allclose(x[2], x0[2] + 0.5 * d0[2], rtol=0, atol=1e-12)  # same loss: the parabola's half way
    assert ours.rho[[0, 2]].eq(0).all() and ours.rho[1].ne(0).any()  # no pair from a point taken back
    for _ in range(3):
        ours.step(x, x / 2, (x * x).sum(1) / 4)
    assert torch.isfinite(x).all() and torch.isfinite(ours.sy).all() and torch.isfinite(ours.pairs).all()


def two_loop(g: torch.Tensor, pairs: list[tuple[torch.Tensor, torch.Tensor]], h0: float) -> torch.Tensor:
    """−H g by the textbook two-loop recursion over the pairs with positive curvature, oldest first."""
    used = [(s, y, 1 / float(s @ y)) for s, y in pairs if s @ y > 1e-10]
    q, alphas = -g, []
    for s, y, rho in reversed(used):
        alphas.append(rho * (s @ q))
        q = q - alphas[-1] * y
    r = h0 * q
    for (s, y, rho), alpha in zip(used, reversed(alphas)):
        r = r + s * (alpha - rho * (y @ r))
    return r


def test_pairs_without_positive_curvature_anywhere_in_the_history_are_left_out_exactly():
    """On a loss with concave regions some pairs in the middle of the history have sᵀy ≤ 0; each
    row's steps are still the two-loop recursion's over the other pairs of its last HISTORY steps."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(ROWS, PIXELS, generator=generator, dtype=torch.float64)
    freqs = 1 + torch.rand(ROWS, PIXELS, generator=generator, dtype=torch.float64)

    def gradient(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:  # of ½‖x‖² + 0.8 Σ cos(f x): concave in places
        return x - 0.8 * f * torch.sin(f * x)

    optimizer, steps, skipped = LBFGS(x), HISTORY + 15, 0
    rows = [{"x": x[row].clone(), "pairs": [], "h0": 1.0, "last": None} for row in range(ROWS)]
    for step in range(steps):
        optimizer.step(x, gradient(x, freqs))
        for row, expected in enumerate(rows):
            g = gradient(expected["x"], freqs[row])
            if expected["last"] is None:
                d = -g * min(1.0, 1 / float(g.abs().sum()))
            else:
                s, y = expected["last"][1], g - expected["last"][0]
                expected["pairs"] = (expected["pairs"] + [(s, y)])[-HISTORY:]
                if s @ y > 1e-10:
                    expected["h0"] = float(s @ y / (y @ y))
                else:
                    skipped += step < steps - 2  # it stays in the history for later steps
                d = two_loop(g, expected["pairs"], expected["h0"])
            expected["x"], expected["last"] = expected["x"] + d, (g, d)
            assert torch.allclose(x[row], expected["x"], rtol=1e-9, atol=1e-9), (row, step)
    assert skipped >= 2, "too few pairs without positive curvature: the test would prove nothing"


@pytest.mark.parametrize("make", [LBFGS, lambda x: Adam(x, 0.1)])
def test_a_step_reads_nothing_back_from_the_device(make):
    """Every value read on the host (`.item()`, `if tensor`, `float(tensor)`) raises on the meta
    device, which holds no data: a whole run of steps, a warm start and a split run there."""
    with pytest.raises((RuntimeError, NotImplementedError)):
        torch.empty(1, device="meta").sum().item()
    x = torch.empty(3, 8, device="meta")
    grad = torch.empty(3, 8, device="meta")
    optimizer = make(x)
    for _ in range(HISTORY + 2):
        optimizer.step(x, grad)
    optimizer.keep(torch.tensor([2, 0], device="meta"))
    if isinstance(optimizer, LBFGS):
        finer = LBFGS(torch.empty(2, 32, device="meta"), optimizer)
        finer.step(torch.empty(2, 32, device="meta"), torch.empty(2, 32, device="meta"))


@pytest.mark.parametrize("make", [LBFGS, lambda x: Adam(x, 0.05)])
def test_a_step_keeps_its_state_in_place_so_that_a_cuda_graph_can_replay_it(make):
    """A CUDA graph replays one step's kernels on the addresses they had when it was captured:
    from the second step on, every tensor an optimiser keeps is written in place, never replaced
    (the ring's slot and Adam's bias corrections count on the device, not on the host)."""
    curvatures, start = problems()
    x = start.clone()
    optimizer = make(x)
    batched_step(optimizer, x, curvatures)

    def addresses() -> dict[str, int]:
        return {name: t.data_ptr() for name, t in vars(optimizer).items() if isinstance(t, torch.Tensor)}

    kept = addresses()
    for _ in range(HISTORY + 3):
        batched_step(optimizer, x, curvatures)
    assert addresses() == kept


@pytest.mark.parametrize("steps", [5, HISTORY + 7])
def test_a_restored_row_has_the_inner_products_of_its_pairs_to_the_last_bit(steps):
    """Restoring records the pairs again, oldest first, by the step's own products: SᵀY and YᵀY
    come out bit for bit as the run had them (in float32, as a job runs). A product computed
    otherwise rounds otherwise, and on a GPU the bf16 passes made that last-bit difference a
    visible one within ten steps of a resumed job."""
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(1, 4096, generator=generator)
    optimizer = LBFGS(x)
    for _ in range(steps):
        optimizer.step(x, x - 0.8 * torch.sin(3 * x) + 0.1 * torch.randn(x.shape, generator=generator))
    restored = LBFGS.restore(x.clone(), optimizer.state(0))
    assert torch.equal(restored.sy, optimizer.sy) and torch.equal(restored.yy, optimizer.yy)
    assert torch.equal(restored.pairs, optimizer.pairs)
