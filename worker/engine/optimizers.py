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
    not positive is kept with ρ = 0 and left out of the product, where torch would not record it:
    a row then remembers the pairs of its last `HISTORY` steps rather than its last `HISTORY`
    pairs. Otherwise each row takes torch's steps.

    The step −H g is the compact form of Byrd, Nocedal & Schnabel (1994) rather than torch's
    two-loop recursion, which is the same product in exact arithmetic: a loop over the pairs is
    nine kernels a pair, 180 a step, each a pass over an image-sized tensor, where the compact
    form reads the pairs twice in two matrix products and solves two 20×20 triangular systems.
    With S, Y the pairs oldest first, R the upper triangle of SᵀY, D its diagonal and γ the
    initial inverse curvature H₀:

        H g = γ g + S u − γ Y w,   R w = Sᵀg,   Rᵀu = (D + γ YᵀY) w − γ Yᵀg.

    SᵀY and YᵀY are kept up to date one pair at a time (a new pair's row and column). A pair left
    out has its row and column of R cleared and a 1 on the diagonal, which takes it out exactly.

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
        self.pairs = x.new_zeros(jobs, 2 * HISTORY, pixels)  # s of slot i at i, its y at HISTORY + i
        self.sy = x.new_zeros(jobs, HISTORY, HISTORY)  # sᵢ·yⱼ by slot
        self.yy = x.new_zeros(jobs, HISTORY, HISTORY)  # yᵢ·yⱼ by slot
        self.rho = x.new_zeros(jobs, HISTORY)          # 1 / sᵢ·yᵢ, or 0: the pair is left out
        self.h0 = x.new_ones(jobs)
        self.cold = torch.ones(jobs, dtype=torch.bool, device=x.device)  # first step 1/‖g‖₁ long
        if previous is not None:
            warm = previous.rho.ne(0).any(1)
            self.h0 = torch.where(warm, previous.h0 * (pixels / previous.pairs.shape[-1]), self.h0)
            self.cold = ~warm
        self.prev_grad = x.new_zeros(jobs, pixels)
        self.prev_step = x.new_zeros(jobs, pixels)
        self.products = x.new_empty(jobs, 3, pixels)  # g, the newest y and s: one product with the pairs
        slots = torch.arange(HISTORY, device=x.device)
        self._ages = (slots[None, :] + slots[:, None] + 1) % HISTORY  # row k: the slots oldest first, k newest
        self._pair_ages = torch.cat([self._ages, self._ages + HISTORY], 1)  # the same for [S Y]

    @torch.no_grad()
    def step(self, x: torch.Tensor, g: torch.Tensor) -> None:
        if self.steps == 0:
            d = g.neg().mul_(self.h0[:, None])
            t = torch.where(self.cold, g.abs().sum(1).reciprocal().clamp(max=1), 1.0)[:, None]
            d.mul_(t)
        else:
            d = self._direction(g, (self.steps - 1) % HISTORY)
        x.add_(d)
        self.prev_grad.copy_(g)
        self.prev_step = d
        self.steps += 1

    def _direction(self, g: torch.Tensor, newest: int) -> torch.Tensor:
        """Record the newest pair in slot `newest`, then −H g by the compact form."""
        s, y = self.pairs[:, newest], self.pairs[:, HISTORY + newest]
        torch.sub(g, self.prev_grad, out=y)
        s.copy_(self.prev_step)
        self.products[:, 0], self.products[:, 1], self.products[:, 2] = g, y, s
        dots = torch.bmm(self.pairs, self.products.transpose(1, 2))  # (jobs, 2 HISTORY, 3): [S Y]ᵀ [g y s]
        self.sy[:, :, newest], self.sy[:, newest, :] = dots[:, :HISTORY, 1], dots[:, HISTORY:, 2]
        self.yy[:, :, newest] = self.yy[:, newest, :] = dots[:, HISTORY:, 1]
        ys = self.sy[:, newest, newest]
        ok = ys > CURVATURE
        self.rho[:, newest] = torch.where(ok, ys.reciprocal(), 0.0)
        self.h0 = torch.where(ok, ys / self.yy[:, newest, newest], self.h0)

        age = self._ages[newest]  # the slots, oldest first: R is triangular in this order
        used = self.rho.index_select(1, age).ne(0).to(g.dtype)
        both = used[:, :, None] * used[:, None, :]
        r = self.sy.index_select(1, age).index_select(2, age).triu().mul_(both) + torch.diag_embed(1 - used)
        yy = self.yy.index_select(1, age).index_select(2, age).mul_(both)
        sg, yg = (dots[:, side:side + HISTORY, 0].index_select(1, age).mul_(used)[..., None] for side in (0, HISTORY))
        gamma = self.h0[:, None, None]
        w = torch.linalg.solve_triangular(r, sg, upper=True)
        u = torch.linalg.solve_triangular(r.transpose(1, 2), r.diagonal(dim1=1, dim2=2)[..., None] * w
                                          + gamma * (yy @ w - yg), upper=False)
        # d = −H g = −γ g − S u + γ Y w: the coefficients of the pairs, put back in slot order
        coefficients = self.rho.new_zeros(len(g), 2 * HISTORY).index_copy_(
            1, self._pair_ages[newest], torch.cat([u, -gamma * w], 1).squeeze(2))
        return torch.baddbmm(g.mul(-self.h0[:, None])[:, None], coefficients[:, None], self.pairs, alpha=-1).squeeze(1)

    def keep(self, rows: torch.Tensor) -> None:
        """Only these rows (jobs) go on, in this order."""
        self.pairs, self.sy, self.yy, self.rho, self.h0, self.cold, self.prev_grad, self.prev_step = (
            t.index_select(0, rows) for t in (self.pairs, self.sy, self.yy, self.rho, self.h0, self.cold,
                                              self.prev_grad, self.prev_step))
        self.products = self.products.new_empty(len(rows), *self.products.shape[1:])  # scratch: nothing to keep

    def state(self, row: int) -> dict:
        """One row's state: the pairs recorded so far (at most HISTORY) and the last step."""
        filled = min(max(self.steps - 1, 0), HISTORY)
        return {"steps": self.steps, "s": self.pairs[row, :filled], "y": self.pairs[row, HISTORY:HISTORY + filled],
                "rho": self.rho[row, :filled], "h0": self.h0[row], "cold": self.cold[row],
                "prev_grad": self.prev_grad[row], "prev_step": self.prev_step[row]}

    @classmethod
    def restore(cls, x: torch.Tensor, state: dict) -> LBFGS:
        """The optimiser of one job (`x` has one row) from its `state`."""
        optimizer = cls(x)
        filled = len(state["rho"])
        optimizer.steps = state["steps"]
        optimizer.pairs[0, :filled] = state["s"].to(x.device)
        optimizer.pairs[0, HISTORY:HISTORY + filled] = state["y"].to(x.device)
        s, y = optimizer.pairs[:, :HISTORY], optimizer.pairs[:, HISTORY:]
        optimizer.sy, optimizer.yy = s @ y.transpose(1, 2), y @ y.transpose(1, 2)
        optimizer.rho[0, :filled] = state["rho"].to(x.device)
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
