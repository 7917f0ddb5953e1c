"""The optimisation loop, coarse to fine: one job, or several of one shape as one batch.

A batch runs one network pass per iteration for all its jobs. Jobs batch when the network sees
the same thing from each (`shared.params.batch_key`: the stage sizes and iterations, layers,
pooling, weights, precision, optimiser). Their losses are summed for one backward pass; VGG
treats each image of a batch apart, so each image's gradient is its own loss's gradient, and the
optimiser steps each job's row on it alone (`optimizers`). A job whose callback asks to stop, or
whose loss diverges, leaves the batch with its own outcome; the others go on. Small images leave
a GPU mostly idle between kernel launches: a batch of them costs about what one does. A job on
its own is a batch of one, which may resume from a checkpoint.

No iteration waits for the device: the optimisers decide on it, and the losses are read back
(one copy for the whole batch) at most once a second to notice a job that diverged, at the end
of each stage, and when a callback asks for them (`Iterate.losses`).
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
from PIL import Image

from shared.params import Params, batch_key

from .images import resize
from .losses import ContentLoss, StyleLoss
from .memory import freed_on_out_of_memory
from .optimizers import LBFGS, Adam
from .transfer import CHECKPOINT_VERSION, Callback, Iterate, Result, Transfer

READ_SECONDS = 1.0  # how often the loop reads the losses back to check for divergence
Optimizer = LBFGS | Adam


@dataclass
class Member:
    """One job of a batch: its inputs, parameters and callback (fresh jobs only: no checkpoint)."""

    content: Image.Image
    styles: Sequence[Image.Image]
    params: Params
    callback: Callback | None = None


@dataclass
class _Job:
    transfer: Transfer
    callback: Callback | None
    style_weight: float = 0.0  # balanced for its style at the coarsest stage (`Transfer._style_balance`)
    targets: tuple[torch.Tensor, list[ContentLoss], list[StyleLoss]] | None = None  # this stage's
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # the last iteration's, on the device
    losses: dict[str, float] = field(default_factory=dict)  # `terms` read back, at iteration `read_at`
    read_at: int = -1
    outcome: Result | Exception | None = None

    def read(self, done: int) -> dict[str, float]:
        """The losses of iteration `done`: one device-to-host copy, the first time they are asked for."""
        if self.read_at != done:
            self.losses, self.read_at = _read([self.terms])[0], done
        return self.losses


def stylize(content: Image.Image, styles: Sequence[Image.Image], params: Params, *,
            init_image: Image.Image | None = None, device: str = "auto",
            callback: Callback | None = None, checkpoint: dict | None = None) -> Result:
    """Run (or resume) a style transfer. Raises `OutOfMemory` (memory freed) if the device ran
    out of it, FloatingPointError if the loss diverged."""
    def run() -> Result:
        (outcome,) = _run([_Job(Transfer(content, styles, params, init_image, device), callback)], checkpoint)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome
    return freed_on_out_of_memory(run)


def stylize_batch(members: Sequence[Member], device: str = "auto") -> list[Result | Exception]:
    """Run the members as one batch; each one's `Result`, or the exception that ended it alone
    (FloatingPointError: its loss diverged). An error of the whole batch (out of memory, a bug)
    is raised. Raises ValueError if the members do not share one `batch_key`."""
    transfers = [Transfer(m.content, m.styles, m.params, device=device) for m in members]
    if len({batch_key(t.params, t.content.size) for t in transfers}) != 1:
        raise ValueError("jobs of different shapes cannot run as one batch")
    return freed_on_out_of_memory(lambda: _run([_Job(t, m.callback) for t, m in zip(transfers, members)]))


def _run(jobs: list[_Job], checkpoint: dict | None = None) -> list[Result | Exception]:
    lead = jobs[0].transfer
    p, net, device = lead.params, lead.net, lead.device
    layers = frozenset(p.content_layers + p.style_layers)
    start = time.perf_counter()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    first_stage, done, images, state = 0, 0, None, None
    if checkpoint is not None:
        first_stage, done, images = checkpoint["stage"], checkpoint["iteration"], checkpoint["image"].to(device)
        state = checkpoint.get("optimizer") if checkpoint.get("version") == CHECKPOINT_VERSION else None
    done_at_start, optimizer, last_read = done, None, time.monotonic()
    for job in jobs:
        job.targets = job.transfer._targets(lead.stages[0])
        job.style_weight = job.transfer.params.style_weight * job.transfer._style_balance(job.targets[2])
    active = list(jobs)
    stage_start = sum(s.iterations for s in lead.stages[:first_stage])
    for index in range(first_stage, len(lead.stages)):
        stage = lead.stages[index]
        if index > 0:
            for job in active:
                job.targets = job.transfer._targets(stage)
        h, w = active[0].targets[0].shape[-2:]
        if images is None:
            images = torch.cat([job.transfer._initial_image(job.targets[0]) for job in active])
        images = resize(images, h, w).detach().contiguous().clone().requires_grad_(True)
        optimizer = _optimizer(p, images, optimizer, state)
        state, tv = None, lead._tv(stage)
        while done - stage_start < stage.iterations and active:
            images.grad = None
            with torch.autocast(device.split(":")[0], torch.bfloat16, enabled=lead.bf16):
                features = net(images, layers)
            terms = [job.transfer._terms({n: f[row:row + 1] for n, f in features.items()}, images[row:row + 1],
                                         *job.targets[1:], tv, job.style_weight)
                     for row, job in enumerate(active)]
            sum(t["total"] for t in terms).backward()  # each image's gradient is its own loss's
            rows = images.detach().view(len(active), -1)
            optimizer.step(rows, images.grad.view(len(active), -1))
            if p.optimizer == "adam":
                rows.clamp_(0, 1)
            done += 1
            for job, job_terms in zip(active, terms):
                job.terms = {name: value.detach() for name, value in job_terms.items()}
            if done - stage_start == stage.iterations or time.monotonic() - last_read >= READ_SECONDS:
                for job, losses in zip(active, _read([job.terms for job in active])):
                    job.losses, job.read_at = losses, done
                    if not all(math.isfinite(v) for v in losses.values()):
                        job.outcome = FloatingPointError(f"the loss diverged by iteration {done}: {losses}")
                last_read = time.monotonic()
            for row, job in enumerate(active):
                if job.outcome is None and job.callback is not None \
                        and job.callback(_iterate(job, index, done, done_at_start, images, row, optimizer, start)):
                    job.outcome = job.transfer._result(index, done, images.detach()[row:row + 1],
                                                       optimizer.state(row), True, job.read(done), start)
            if any(job.outcome is not None for job in active):
                keep = [row for row, job in enumerate(active) if job.outcome is None]
                active = [active[row] for row in keep]
                if active:
                    images = images.detach()[keep].requires_grad_(True)
                    optimizer.keep(keep)
        stage_start += stage.iterations
        if not active:
            break
    for row, job in enumerate(active):
        job.outcome = job.transfer._result(len(lead.stages) - 1, done, images.detach()[row:row + 1], None, False,
                                           job.read(done), start)
    return [job.outcome for job in jobs]


def _optimizer(p: Params, images: torch.Tensor, previous: Optimizer | None, state: dict | None) -> Optimizer:
    """This stage's: restored from a checkpoint's `state`, or new (an L-BFGS warm-started from the
    coarser stage's `previous`)."""
    rows = images.detach().view(len(images), -1)
    if p.optimizer == "adam":
        return Adam(rows, p.learning_rate) if state is None else Adam.restore(rows, p.learning_rate, state)
    return LBFGS(rows, previous) if state is None else LBFGS.restore(rows, state)


def _read(terms: list[dict[str, torch.Tensor]]) -> list[dict[str, float]]:
    """Loss terms as numbers, in one device-to-host copy (one sync on a GPU)."""
    values = torch.stack([torch.stack(list(t.values())) for t in terms]).tolist()
    return [dict(zip(t, row)) for t, row in zip(terms, values)]


def _iterate(job: _Job, stage_index: int, done: int, done_at_start: int, images: torch.Tensor, row: int,
             optimizer: Optimizer, start: float) -> Iterate:
    t = job.transfer
    stage = t.stages[stage_index]
    elapsed = time.perf_counter() - start
    image, terms = images.detach()[row:row + 1], job.terms
    return Iterate(scale=stage_index, scales=len(t.stages), width=images.shape[-1], height=images.shape[-2],
                   iteration=done, total=t.total, elapsed=elapsed,
                   iterations_per_second=(done - done_at_start) / max(elapsed, 1e-9),
                   _losses=functools.cache(lambda: job.losses if job.read_at == done else _read([terms])[0]),
                   _image=lambda: t._output(image, stage),
                   _checkpoint=lambda: t._checkpoint(stage_index, done, image, optimizer.state(row)))
