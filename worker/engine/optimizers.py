"""L-BFGS and Adam for a batch of images, one row per job, that never wait for the device.

torch.optim.LBFGS reads values back to the host five times a step (the loss, and its branches on
the gradient, the curvature and the step), each a full device sync on a GPU, and a batch stepped
one job at a time issues its hundred-odd small kernels once per job. These keep every job's state
in the rows of shared tensors and branch with `torch.where`, so one step is one set of kernels for
the whole batch, queued without waiting. A row's state can be split off (a job that leaves the
batch, `keep`), saved and restored (a checkpoint, `state`/`restore`).

`x` and `g` are (jobs, pixels) views of the images and their gradients; `step` moves `x` in place.
"""
from __future__ import annotations

import math

import torch

HISTORY = 20   # L-BFGS curvature pairs per job (2 x HISTORY image-sized tensors)
CURVATURE = 1e-10  # torch's: a pair with sᵀy at or below this is not used


class LBFGS:
    """torch.optim.LBFGS(lr=1, max_iter=1, no line search, tolerances off), one per row.

    The history is a ring of the last `HISTORY` steps' curvature pairs. A pair whose curvature is
    not positive is kept with ρ = 0, which makes it a no-op in both loops, where torch would leave
    it out: a row then remembers the pairs of its last `HISTORY` steps rather than its last
    `HISTORY` pairs. Otherwise each row takes torch's steps.

    A finer stage starts from the inverse curvature H₀ its coarser stage ended with (`previous`),
    scaled by the ratio of pixel counts (the losses are means over positions: the gradient per
    pixel shrinks as the pixels multiply), instead of torch's first step of 1/‖g‖₁. On an image
    already near its optimum that step is so short that the curvature it measures is rounding
    noise; the next step then overshoots (at 512 px the loss jumped from 1.2 to 2.2, or from 3.1
    to 74) and the stage spends its next steps recovering. A row whose coarser stage measured no
    curvature starts as torch does.
    """

    def __init__(self, x: torch.Tensor, previous: LBFGS | None = None) -> None:
        jobs, pixels = x.shape
        self.steps = 0
        self.s = x.new_zeros(HISTORY, jobs, pixels)
        self.y = x.new_zeros(HISTORY, jobs, pixels)
        self.rho = x.new_zeros(HISTORY, jobs)
        self.h0 = x.new_ones(jobs)
        self.cold = torch.ones(jobs, dtype=torch.bool, device=x.device)  # first step 1/‖g‖₁ long
        if previous is not None:
            warm = previous.rho.ne(0).any(0)
            self.h0 = torch.where(warm, previous.h0 * (pixels / previous.s.shape[-1]), self.h0)
            self.cold = ~warm
        self.prev_grad = x.new_zeros(jobs, pixels)
        self.prev_step = x.new_zeros(jobs, pixels)
        self.scratch = x.new_empty(jobs, pixels)  # for products: a CPU allocates each large temporary afresh

    @torch.no_grad()
    def step(self, x: torch.Tensor, g: torch.Tensor) -> None:
        if self.steps == 0:
            d = g.neg().mul_(self.h0[:, None])
            t = torch.where(self.cold, g.abs().sum(1).reciprocal().clamp(max=1), 1.0)[:, None]
            d.mul_(t)
        else:
            slot = (self.steps - 1) % HISTORY
            y, s = torch.sub(g, self.prev_grad, out=self.y[slot]), self.s[slot].copy_(self.prev_step)
            ys = self._dot(y, s)
            ok = ys > CURVATURE
            self.rho[slot] = torch.where(ok, ys.reciprocal(), 0.0)
            self.h0 = torch.where(ok, ys / self._dot(y, y), self.h0)
            d = self._direction(g, slot)
        x.add_(d)
        self.prev_grad.copy_(g)
        self.prev_step = d
        self.steps += 1

    def _dot(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Row-wise inner products of (jobs, pixels) tensors."""
        return torch.mul(a, b, out=self.scratch).sum(1)

    def _direction(self, g: torch.Tensor, newest: int) -> torch.Tensor:
        """−H g by the two-loop recursion over the pairs recorded so far, newest first."""
        order = [(newest - i) % HISTORY for i in range(min(self.steps, HISTORY))]
        q, alphas = g.neg(), {}
        for j in order:
            alphas[j] = self.rho[j] * self._dot(self.s[j], q)
            q.addcmul_(self.y[j], alphas[j][:, None], value=-1)
        r = q.mul_(self.h0[:, None])
        for j in reversed(order):
            beta = self.rho[j] * self._dot(self.y[j], r)
            r.addcmul_(self.s[j], (alphas[j] - beta)[:, None])
        return r

    def keep(self, rows: torch.Tensor) -> None:
        """Only these rows (jobs) go on, in this order."""
        self.s, self.y, self.rho = (t.index_select(1, rows) for t in (self.s, self.y, self.rho))
        self.h0, self.cold, self.prev_grad, self.prev_step, self.scratch = (
            t.index_select(0, rows) for t in (self.h0, self.cold, self.prev_grad, self.prev_step, self.scratch))

    def state(self, row: int) -> dict:
        """One row's state: the pairs recorded so far (at most HISTORY) and the last step."""
        filled = min(max(self.steps - 1, 0), HISTORY)
        return {"steps": self.steps, "s": self.s[:filled, row], "y": self.y[:filled, row],
                "rho": self.rho[:filled, row], "h0": self.h0[row], "cold": self.cold[row],
                "prev_grad": self.prev_grad[row], "prev_step": self.prev_step[row]}

    @classmethod
    def restore(cls, x: torch.Tensor, state: dict) -> LBFGS:
        """The optimiser of one job (`x` has one row) from its `state`."""
        optimizer = cls(x)
        filled = len(state["rho"])
        optimizer.steps = state["steps"]
        for name in ("s", "y", "rho"):
            getattr(optimizer, name)[:filled, 0] = state[name].to(x.device)
        optimizer.h0[0], optimizer.cold[0] = state["h0"], state["cold"]
        optimizer.prev_grad[0], optimizer.prev_step[0] = state["prev_grad"], state["prev_step"]
        return optimizer


class Adam:
    """torch.optim.Adam(lr, betas (0.9, 0.999), eps 1e-8), one per row."""

    BETAS, EPS = (0.9, 0.999), 1e-8

    def __init__(self, x: torch.Tensor, lr: float) -> None:
        self.lr, self.steps = lr, 0
        self.m, self.v = torch.zeros_like(x), torch.zeros_like(x)

    @torch.no_grad()
    def step(self, x: torch.Tensor, g: torch.Tensor) -> None:
        (b1, b2), self.steps = self.BETAS, self.steps + 1
        self.m.lerp_(g, 1 - b1)
        self.v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (self.v.sqrt() / math.sqrt(1 - b2 ** self.steps)).add_(self.EPS)
        x.addcdiv_(self.m, denom, value=-self.lr / (1 - b1 ** self.steps))

    def keep(self, rows: torch.Tensor) -> None:
        self.m, self.v = self.m.index_select(0, rows), self.v.index_select(0, rows)

    def state(self, row: int) -> dict:
        return {"steps": self.steps, "m": self.m[row], "v": self.v[row]}

    @classmethod
    def restore(cls, x: torch.Tensor, lr: float, state: dict) -> Adam:
        optimizer = cls(x, lr)
        optimizer.steps = state["steps"]
        optimizer.m[0], optimizer.v[0] = state["m"], state["v"]
        return optimizer
