"""L-BFGS and Adam for a batch of images, one row per job, that never wait for the device.

torch.optim.LBFGS reads values back to the host five times a step (the loss, and its branches on
the gradient, the curvature and the step), each a full device sync on a GPU, and a batch stepped
one job at a time issues its hundred-odd small kernels once per job. These keep every job's state
in the rows of shared tensors and branch with `torch.where`, so one step is one set of kernels for
the whole batch, queued without waiting. A row's state can be split off (a job that leaves the
batch, `keep`), saved and restored (a checkpoint, `state`/`restore`).

`x` and `g` are (jobs, pixels) views of the images and their gradients, `loss` (jobs,) the loss
at `x`; `step` moves `x` in place.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch

HISTORY = 20   # L-BFGS curvature pairs per job (2 x HISTORY image-sized tensors)
CURVATURE = 1e-10  # torch's: a pair with sᵀy at or below this is not used
TAKE_BACK = 10.0   # an L-BFGS step to a loss more than this many times the last one is taken back


class _Counted(ABC):
    """A step is the device work (`kernels`, what a CUDA graph captures and replays) and its count
    on the host (`steps`: what a checkpoint and the first L-BFGS step go by)."""

    steps: int
    # (jobs,): whether each row kept the point it was last evaluated at (False: L-BFGS took the step
    # to it back), updated in place
    accepted: torch.Tensor

    @abstractmethod
    def kernels(self, x: torch.Tensor, g: torch.Tensor, loss: torch.Tensor | None = None) -> None: ...

    def step(self, x: torch.Tensor, g: torch.Tensor, loss: torch.Tensor | None = None) -> None:
        self.kernels(x, g, loss)
        self.steps += 1


class LBFGS(_Counted):
    """torch.optim.LBFGS(lr=1, max_iter=1, no line search, tolerances off), one per row, with one
    safeguard where it is given the loss.

    The safeguard: without a line search a step can overshoot. Usually the next one comes back,
    but bf16's rounding can carry a row further out each time, until its loss overflows: a batch
    of three 48 px jobs from noise diverged by its 21st step on one CPU, while each job alone
    converged (its loss jumped 100- to 1000-fold and came back three times, then did not). So a
    step whose loss comes out more than `TAKE_BACK` times the previous one's, or not finite, is
    taken back (jumps of 2 or 3 times are common near a minimum, and harmless). The row returns
    to its previous point and steps again along the same direction, shorter: to the minimum of
    the parabola through the two losses and the slope at the start (Nocedal & Wright's
    backtracking by quadratic interpolation), within 0.1 to 0.5 of the step it took back. The
    rejected point's curvature pair is not recorded. A run whose loss never jumps so far takes
    torch's steps, as without the loss.

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
        self.chunks = _chunks(pixels)
        # the pairs chunk-major, (jobs, chunks, 2 HISTORY, pixels / chunks), s of slot i at i, its y at
        # HISTORY + i: the products with them are batches of short ones (`_inner`), which fill a GPU,
        # where one product over all the pixels per job ran at a tenth of its bandwidth
        self.pairs = x.new_zeros(jobs, self.chunks, 2 * HISTORY, pixels // self.chunks)
        self.sy = x.new_zeros(jobs, HISTORY, HISTORY)  # sᵢ·yⱼ by slot
        self.yy = x.new_zeros(jobs, HISTORY, HISTORY)  # yᵢ·yⱼ by slot
        self.rho = x.new_zeros(jobs, HISTORY)          # 1 / sᵢ·yᵢ, or 0: the pair is left out
        self.h0 = x.new_ones(jobs)
        self.cold = torch.ones(jobs, dtype=torch.bool, device=x.device)  # first step 1/‖g‖₁ long
        self.accepted = torch.ones(jobs, dtype=torch.bool, device=x.device)
        if previous is not None:
            warm = previous.rho.ne(0).any(1)
            self.h0 = torch.where(warm, previous.h0 * (pixels / previous.prev_grad.shape[-1]), self.h0)
            self.cold = ~warm
        self.prev_grad = x.new_zeros(jobs, pixels)
        self.prev_step = x.new_zeros(jobs, pixels)
        self.prev_x = x.new_zeros(jobs, pixels)  # the point `prev_grad` is the gradient at
        self.prev_loss = x.new_full((jobs,), math.inf)
        self.products = x.new_empty(jobs, self.chunks, 3, pixels // self.chunks)  # g, the newest y and s
        # the slot the next pair goes to, on the device, so that a step's kernels are the same at
        # every step (a CUDA graph replays them) and index by it
        self.slot = torch.full((1,), HISTORY - 1, dtype=torch.long, device=x.device)
        slots = torch.arange(HISTORY, device=x.device)
        self._ages = (slots[None, :] + slots[:, None] + 1) % HISTORY  # row k: the slots oldest first, k newest
        self._pair_ages = torch.cat([self._ages, self._ages + HISTORY], 1)  # the same for [S Y]

    @torch.no_grad()
    def kernels(self, x: torch.Tensor, g: torch.Tensor, loss: torch.Tensor | None = None) -> None:
        """Every tensor it keeps is updated in place."""
        finite = torch.isfinite(g).all(1)
        if self.steps == 0:
            back = torch.zeros_like(finite)
            d = g.neg().mul_(self.h0[:, None])
            t = torch.where(self.cold, g.abs().sum(1).reciprocal().clamp(max=1), 1.0)[:, None]
            d.mul_(t)
        else:
            # taken back: the loss jumped (NaN compares false) or the gradient is not finite
            back = ~finite if loss is None else ~(finite & (loss <= TAKE_BACK * self.prev_loss))
            d = torch.where(back[:, None], self.prev_step * self._shorter(loss)[:, None], self._direction(g, ~back))
        self.accepted.copy_(~back)
        self.prev_x.copy_(torch.where(back[:, None], self.prev_x, x))
        x.copy_(self.prev_x + d)
        if loss is not None:
            self.prev_loss.copy_(torch.where(back, self.prev_loss, loss))
        self.prev_grad.copy_(torch.where(back[:, None], self.prev_grad, g))
        self.prev_step.copy_(d)
        self.slot.add_(1).remainder_(HISTORY)

    def _shorter(self, loss: torch.Tensor | None) -> torch.Tensor:
        """The part of the last step to take instead of it: the minimum of the parabola with the
        previous loss and slope at its start and `loss` at its end, within [0.1, 0.5]."""
        if loss is None:
            return self.prev_loss.new_full(self.prev_loss.shape, 0.5)
        slope = (self.prev_grad * self.prev_step).sum(1)
        part = -slope / (2 * (loss - self.prev_loss - slope))
        return torch.nan_to_num(part, nan=0.1).clamp_(0.1, 0.5)

    def _direction(self, g: torch.Tensor, record: torch.Tensor) -> torch.Tensor:
        """Record the newest pair in `slot` (an empty one where not `record`), then −H g by the
        compact form."""
        jobs, chunks, newest = len(g), self.chunks, self.slot
        g_ = g.view(jobs, chunks, -1)
        self.products[:, :, 0] = g_
        torch.sub(g_, self.prev_grad.view(jobs, chunks, -1), out=self.products[:, :, 1])
        self.products[:, :, 2] = self.prev_step.view(jobs, chunks, -1)
        self.products[:, :, 1:] = torch.where(record[:, None, None, None], self.products[:, :, 1:], 0.0)
        dots = self._record(newest)
        ys, yy_newest = self.sy[:, newest, newest].view(jobs), self.yy[:, newest, newest].view(jobs)
        ok = ys > CURVATURE
        self.rho.index_copy_(1, newest, torch.where(ok, ys.reciprocal(), 0.0)[:, None])
        self.h0.copy_(torch.where(ok, ys / yy_newest, self.h0))

        age = self._ages[newest].view(HISTORY)  # the slots, oldest first: R is triangular in this order
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
        coefficients = self.rho.new_zeros(jobs, 2 * HISTORY).index_copy_(
            1, self._pair_ages[newest].view(-1), torch.cat([u, -gamma * w], 1).squeeze(2))
        per_chunk = coefficients[:, None, None].expand(jobs, chunks, 1, 2 * HISTORY).contiguous()
        return torch.baddbmm(g_.mul(-self.h0[:, None, None]).view(jobs * chunks, 1, -1),
                             per_chunk.view(jobs * chunks, 1, -1),
                             self.pairs.view(jobs * chunks, 2 * HISTORY, -1), alpha=-1).view(jobs, -1)

    def _record(self, slot: torch.Tensor) -> torch.Tensor:
        """Put the pair in `products` ([g y s]) in `slot`, update its row and column of SᵀY and YᵀY,
        and return [S Y]ᵀ [g y s], (jobs, 2 HISTORY, 3)."""
        self.pairs.index_copy_(2, torch.cat([slot + HISTORY, slot]), self.products[:, :, 1:])
        dots = _inner(self.pairs, self.products)
        self.sy.index_copy_(2, slot, dots[:, :HISTORY, 1:2])
        self.sy.index_copy_(1, slot, dots[:, HISTORY:, 2][:, None])
        yy = dots[:, HISTORY:, 1]
        self.yy.index_copy_(2, slot, yy[..., None])
        self.yy.index_copy_(1, slot, yy[:, None])
        return dots

    def keep(self, rows: torch.Tensor) -> None:
        """Only these rows (jobs) go on, in this order."""
        (self.pairs, self.sy, self.yy, self.rho, self.h0, self.cold, self.accepted, self.prev_grad, self.prev_step,
         self.prev_x, self.prev_loss) = (t.index_select(0, rows) for t in (self.pairs, self.sy, self.yy, self.rho,
                                                                           self.h0, self.cold, self.accepted,
                                                                           self.prev_grad, self.prev_step,
                                                                           self.prev_x, self.prev_loss))
        self.products = self.products.new_empty(len(rows), *self.products.shape[1:])  # scratch: nothing to keep

    def state(self, row: int) -> dict:
        """One row's state: the pairs recorded so far (at most HISTORY), by slot, and the last step."""
        filled = min(max(self.steps - 1, 0), HISTORY)
        s, y = (self.pairs[row, :, side:side + filled].transpose(0, 1).reshape(filled, len(self.prev_grad[row]))
                for side in (0, HISTORY))
        return {"steps": self.steps, "s": s, "y": y, "rho": self.rho[row, :filled], "h0": self.h0[row],
                "cold": self.cold[row], "prev_grad": self.prev_grad[row], "prev_step": self.prev_step[row],
                "prev_x": self.prev_x[row], "prev_loss": self.prev_loss[row]}

    @classmethod
    def restore(cls, x: torch.Tensor, state: dict) -> LBFGS:
        """The optimiser of one job (`x` has one row) from its `state`."""
        optimizer = cls(x)
        filled = len(state["rho"])
        optimizer.steps = state["steps"]
        optimizer.slot.fill_((optimizer.steps - 1) % HISTORY)
        # the pairs recorded again oldest first, by the step's own products, so that SᵀY and YᵀY
        # are what they were to the last bit: bf16's passes turn a last-bit difference in a step
        # into a visible one within ten steps
        s, y = (state[key].to(x.device).view(
            filled, optimizer.chunks, optimizer.pairs.shape[-1]) for key in ("s", "y"))
        optimizer.products.zero_()
        for step in range(optimizer.steps - filled, optimizer.steps):
            slot = (step - 1) % HISTORY
            optimizer.products[0, :, 1], optimizer.products[0, :, 2] = y[slot], s[slot]
            optimizer._record(torch.tensor([slot], device=x.device))
        optimizer.rho[0, :filled] = state["rho"].to(x.device)
        optimizer.h0[0], optimizer.cold[0] = state["h0"], state["cold"]
        optimizer.prev_grad[0], optimizer.prev_step[0] = state["prev_grad"], state["prev_step"]
        optimizer.prev_x[0], optimizer.prev_loss[0] = state["prev_x"], state["prev_loss"]
        return optimizer


CHUNKS = 256  # at most: a product per chunk and job


def _chunks(pixels: int) -> int:
    """The most chunks, up to CHUNKS, that split `pixels` evenly."""
    return max(c for c in range(1, min(CHUNKS, pixels) + 1) if pixels % c == 0)


def _inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(jobs, chunks, m, n) x (jobs, chunks, k, n) -> (jobs, m, k): inner products over the chunks."""
    return (a @ b.transpose(-1, -2)).sum(1)


class Adam(_Counted):
    """torch.optim.Adam(lr, betas (0.9, 0.999), eps 1e-8), one per row, each row at its own job's
    learning rate (`lr`: one for every row, or one per row)."""

    BETAS, EPS = (0.9, 0.999), 1e-8

    def __init__(self, x: torch.Tensor, lr: float | Sequence[float]) -> None:
        self.steps = 0
        self.lr = torch.as_tensor(lr, dtype=x.dtype, device=x.device).expand(len(x)) \
            .reshape(len(x), *[1] * (x.dim() - 1)).clone()
        self.m, self.v = torch.zeros_like(x), torch.zeros_like(x)
        self.accepted = torch.ones(len(x), dtype=torch.bool, device=x.device)  # every step is kept
        self.t = x.new_zeros(())  # the step count on the device, for the bias corrections (see `LBFGS.slot`)

    @torch.no_grad()
    def kernels(self, x: torch.Tensor, g: torch.Tensor, loss: torch.Tensor | None = None) -> None:
        """(Adam's steps are bounded by its learning rate: it needs no safeguard, nor the loss.)"""
        b1, b2 = self.BETAS
        self.t.add_(1)
        self.m.lerp_(g, 1 - b1)
        self.v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (self.v.sqrt() / (1 - b2 ** self.t).sqrt()).add_(self.EPS)
        x.addcdiv_(self.m, denom.mul_((1 - b1 ** self.t) / -self.lr))

    def keep(self, rows: torch.Tensor) -> None:
        self.m, self.v, self.lr, self.accepted = (t.index_select(0, rows)
                                                  for t in (self.m, self.v, self.lr, self.accepted))

    def state(self, row: int) -> dict:
        return {"steps": self.steps, "m": self.m[row], "v": self.v[row]}

    @classmethod
    def restore(cls, x: torch.Tensor, lr: float, state: dict) -> Adam:
        optimizer = cls(x, lr)
        optimizer.steps = state["steps"]
        optimizer.t.fill_(state["steps"])
        optimizer.m[0], optimizer.v[0] = state["m"], state["v"]
        return optimizer
