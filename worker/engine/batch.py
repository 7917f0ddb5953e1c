"""Several jobs of one shape optimised together: one network pass per iteration for the whole
batch, one optimiser, one callback and one outcome per job.

Jobs batch when the network sees the same thing from each (`shared.params.batch_key`: the stage
sizes and iterations, layers, pooling, weights, precision, optimiser). Their losses are summed for
one backward pass; VGG treats each image of a batch apart, so each image's gradient is its own
loss's gradient, and each job's optimiser steps on it alone. A job whose callback asks to stop,
or whose loss diverges, leaves the batch with its own outcome; the others go on. Small images
leave a GPU mostly idle between kernel launches: a batch of them costs about what one does.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

import torch
from PIL import Image

from shared.params import Params, batch_key

from .images import resize
from .memory import freed_on_out_of_memory
from .transfer import Callback, Iterate, Result, Transfer, read_losses


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
    image: torch.Tensor | None = None
    optimizer: torch.optim.Optimizer | None = None
    style_weight: float = 0.0  # balanced for its style at the coarsest stage, as a solo run's
    losses: dict[str, float] | None = None
    outcome: Result | Exception | None = None


def stylize_batch(members: Sequence[Member], device: str = "auto") -> list[Result | Exception]:
    """Run the members as one batch; each one's `Result`, or the exception that ended it alone
    (FloatingPointError: its loss diverged). An error of the whole batch (out of memory, a bug)
    is raised. Raises ValueError if the members do not share one `batch_key`."""
    transfers = [Transfer(m.content, m.styles, m.params, device=device) for m in members]
    if len({batch_key(t.params, t.content.size) for t in transfers}) != 1:
        raise ValueError("jobs of different shapes cannot run as one batch")
    jobs = [_Job(t, m.callback) for t, m in zip(transfers, members)]
    return freed_on_out_of_memory(lambda: _run(jobs))


def _run(jobs: list[_Job]) -> list[Result | Exception]:
    lead = jobs[0].transfer
    p, net, device = lead.params, lead.net, lead.device
    layers = frozenset(p.content_layers + p.style_layers)
    start = time.perf_counter()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    active, done = list(jobs), 0
    for index, stage in enumerate(lead.stages):
        targets = {}
        for job in active:
            content, content_losses, style_losses = job.transfer._targets(stage)
            if index == 0:
                job.style_weight = job.transfer.params.style_weight * job.transfer._style_balance(style_losses)
            h, w = content.shape[-2:]
            image = job.transfer._initial_image(content) if job.image is None else resize(job.image, h, w)
            job.image = image.detach().contiguous().clone().requires_grad_(True)
            job.optimizer = job.transfer._optimizer(job.image, job.optimizer)
            targets[id(job)] = (content_losses, style_losses)
        tv = lead._tv(stage)
        for _ in range(stage.iterations):
            if not active:
                break
            for job in active:
                job.optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.split(":")[0], torch.bfloat16, enabled=lead.bf16):
                features = net(torch.cat([job.image for job in active]), layers)
            terms = [job.transfer._terms({n: f[row:row + 1] for n, f in features.items()}, job.image,
                                         *targets[id(job)], tv, job.style_weight)
                     for row, job in enumerate(active)]
            sum(t["total"] for t in terms).backward()  # each image's gradient is its own loss's
            done += 1
            for job, job_terms in zip(list(active), terms):
                job.optimizer.step(lambda loss=job_terms["total"]: loss)
                if p.optimizer == "adam":
                    with torch.no_grad():
                        job.image.clamp_(0, 1)
                job.losses = read_losses(job_terms)
                if not all(math.isfinite(v) for v in job.losses.values()):
                    job.outcome = FloatingPointError(f"the loss diverged at iteration {done}: {job.losses}")
                elif job.callback is not None and job.callback(_iterate(job, index, done, start)):
                    job.outcome = job.transfer._result(index, done, job.image, job.optimizer, True, job.losses, start)
                if job.outcome is not None:
                    active.remove(job)
    for job in active:
        job.outcome = job.transfer._result(len(lead.stages) - 1, done, job.image, job.optimizer, False,
                                           job.losses or {}, start)
    return [job.outcome for job in jobs]


def _iterate(job: _Job, stage_index: int, done: int, start: float) -> Iterate:
    t, image, optimizer = job.transfer, job.image, job.optimizer
    stage = t.stages[stage_index]
    elapsed = time.perf_counter() - start
    return Iterate(scale=stage_index, scales=len(t.stages), width=image.shape[-1], height=image.shape[-2],
                   iteration=done, total=t.total, losses=job.losses, elapsed=elapsed,
                   iterations_per_second=done / max(elapsed, 1e-9),
                   _image=lambda: t._output(image, stage),
                   _checkpoint=lambda: t._checkpoint(stage_index, done, image, optimizer))
