"""The optimisation loop, coarse to fine: one job, or several of one shape as one batch.

A batch runs one network pass per iteration for all its jobs. Jobs batch when the network sees
the same thing from each (`shared.params.batch_key`: the stage sizes and iterations, layers,
pooling, weights, precision, optimiser). Their loss terms are rows of one set of kernels
(`_Objective`), summed for one backward pass; VGG treats each image of a batch apart, so each
image's gradient is its own loss's gradient, and the optimiser steps each job's row on it alone
(`optimizers`). A job whose callback asks to stop, or whose loss diverges (or whose callback
raises FloatingPointError: it read a loss that did), leaves the batch with its own outcome; the
others go on. Small images leave a GPU mostly idle between kernel launches: a batch of them costs
about what one does. A job on its own is a batch of one, which may resume from a checkpoint.

No iteration waits for the device: the optimisers decide on it, and the losses are read back
(one copy for the whole batch) at most once a second to notice a job that diverged, at the end
of each stage, and when a callback asks for them (`Iterate.losses`). On CUDA an iteration is
captured once per stage and batch as a CUDA graph and replayed (`_Iteration`). With `COMPILE`,
the network's passes and the losses go through torch.compile (`_compiled_terms`): off, as on
an H200 it gained 1.2 to 1.5 times an iteration but took up to 28 s to compile each new shape,
against a 0.65 s default 512 px job.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from PIL import Image

from shared.params import Params, batch_key

from .images import resize
from .losses import ContentLoss, StyleLoss, TVLoss
from .memory import freed_on_out_of_memory, is_out_of_memory, room_for_graph, unwind_capture
from .optimizers import LBFGS, Adam
from .transfer import CHECKPOINT_VERSION, Callback, Iterate, Result, Transfer

log = logging.getLogger(__name__)
READ_SECONDS = 1.0  # how often the loop reads the losses back to check for divergence
CUDA_GRAPHS = True  # replay a stage's iterations as a CUDA graph (bench/gpu.py measures without, too)
COMPILE = False     # torch.compile the network's passes and the losses (`_terms`): bench/gpu.py measures it
# on CUDA's fast path, each convolution and its ReLU as one cuDNN call (`vgg.conv_relu`; not
# compiled: Inductor fuses the bias and ReLU on its own)
FUSED_CONV_RELU = True
GRAPH_AFTER = 3     # eager iterations of a stage first: the first step is another one, cuDNN picks its kernels
GRAPH_LEFT = 8      # capture only if at least this many iterations of the stage are left
# a graph's pool against an eager iteration's own tensors, the most it is thought to take, and at
# least GRAPH_ROOM_MIN: on an H200 a default job's pools took 1.30x and 1.32x at 512 and 1024 px,
# but 100 and 76 MB at 128 and 256 px, where 24 and 90 MB were checked for (`bench/job_memory.py`)
GRAPH_ROOM = 1.5
GRAPH_ROOM_MIN = 128 * 2**20
# the graphs of captures that ran out of memory, never destroyed: PyTorch unwinds only a capture that
# reached its end (pytorch/pytorch#190308), and before 2.12 not even one whose end raised
# (`memory.unwind_capture`); destroying such a graph fails a check ("The graph should be registered
# to the state", CUDAGeneratorImpl), which aborts the process, in garbage collection or at its exit
# (an H100 and an H200, torch 2.11). The rest of the iteration is freed. The room check
# (`room_for_graph`) makes such a capture rare: the room must go between the check and the capture
_ABANDONED: list[torch.cuda.CUDAGraph] = []
Optimizer = LBFGS | Adam


@dataclass
class Member:
    """One job of a batch: its inputs, parameters and callback (fresh jobs only: no checkpoint), and
    what to call with its outcome as soon as it is known (a job that stops or diverges leaves the
    batch then, while the others run on)."""

    content: Image.Image
    styles: Sequence[Image.Image]
    params: Params
    callback: Callback | None = None
    ended: Callable[[Result | Exception], None] | None = None


@dataclass
class _Job:
    transfer: Transfer
    callback: Callback | None
    ended: Callable[[Result | Exception], None] | None = None
    style_weight: float = 0.0  # balanced for its style at the coarsest stage (`Transfer._style_balance`)
    targets: tuple[torch.Tensor, list[ContentLoss], list[StyleLoss]] | None = None  # this stage's
    last: tuple[_Losses, int] | None = None  # its latest losses: the batch's, and its row there
    outcome: Result | Exception | None = None

    def losses(self) -> dict[str, float]:
        """Its latest losses, read back if they were not yet; none if it ran no iteration (resumed at its end)."""
        if self.last is None:
            return {}
        batch, row = self.last
        return batch.rows()[row]


class _Objective:
    """The batch's loss at one stage, each job's terms a row of one set of kernels: the jobs'
    targets joined (`PerImage.join`), their weights as columns."""

    def __init__(self, jobs: list[_Job], tv: TVLoss) -> None:
        p, device = jobs[0].transfer.params, jobs[0].transfer.device  # the layers are the batch's (batch_key)
        self.content_layers, self.style_layers, self.tv = p.content_layers, p.style_layers, tv
        self.content = [ContentLoss.join([job.targets[1][i] for job in jobs]) for i in range(len(p.content_layers))]
        self.style = [StyleLoss.join([job.targets[2][i] for job in jobs]) for i in range(len(p.style_layers))]
        self.layer_weights = torch.tensor([job.transfer.layer_weights for job in jobs], device=device).T
        self.weights = torch.tensor([(job.transfer.params.content_weight, job.style_weight, job.transfer.params.tv_weight)
                                     for job in jobs], device=device).T
        self.kept = torch.full((len(TERMS), len(jobs)), math.nan, device=device)  # `kept_terms`'

    def __call__(self, features: dict[str, torch.Tensor], images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss terms and their weighted total, one value per image (the style weight is each
        job's `params.style_weight` balanced for its style, `Transfer._style_balance`). In fp32
        from bf16 features too, without an fp32 copy of them: the Grams accumulate in fp32
        (`losses.gram`), the content error is promoted against its fp32 target."""
        terms = {"content": sum(loss(features[n]) for loss, n in zip(self.content, self.content_layers)) / len(self.content),
                 "style": sum(w * loss(features[n]) for w, loss, n in zip(self.layer_weights, self.style, self.style_layers)),
                 "tv": self.tv(images)}
        terms["total"] = (self.weights * torch.stack(list(terms.values()))).sum(0)
        return terms

    def kept_terms(self, terms: torch.Tensor, accepted: torch.Tensor) -> torch.Tensor:
        """Each job's terms at the point its optimiser kept (`accepted`): this evaluation's, or where
        L-BFGS took the step to it back (its loss jumped, or was not finite), those of the point it
        went back to and steps from again. Such an evaluation is no divergence: read as one, a job
        failed or not by whether its losses happened to be read then. Kept in place (a CUDA graph
        replays this); a stage's first evaluation, or a resumed run's, is taken as it is."""
        take = accepted | self.kept.isnan().any(0)
        self.kept.copy_(torch.where(take, terms, self.kept))
        return self.kept.clone()

    def keep(self, rows: torch.Tensor) -> None:
        for loss in self.content + self.style:
            loss.keep(rows)
        self.layer_weights, self.weights = self.layer_weights.index_select(1, rows), self.weights.index_select(1, rows)
        self.kept = self.kept.index_select(1, rows)


class _Losses:
    """One iteration's loss terms of the batch (a row per term, a column per job), left on the
    device until first asked for; then read back in one copy (one sync on a GPU) for every job."""

    def __init__(self, terms: torch.Tensor) -> None:
        self.terms = terms
        self._rows: list[dict[str, float]] | None = None

    def rows(self) -> list[dict[str, float]]:
        if self._rows is None:
            self._rows = _read(self.terms)
        return self._rows


TERMS = ("content", "style", "tv", "total")  # `_Objective`'s, in its order


def _read(terms: torch.Tensor) -> list[dict[str, float]]:
    """A batch's loss terms as numbers, one dict per job, in one device-to-host copy."""
    return [dict(zip(TERMS, column)) for column in zip(*terms.tolist())]


class _Iteration:
    """One iteration of the batch at one stage: the network's passes, the losses, the backward pass
    and the optimiser's step. On CUDA, after `GRAPH_AFTER` eager ones (on a side stream, as CUDA
    graph capture asks), it is captured once as a CUDA graph and replayed: eager, its ~1,400
    operator calls kept the host busy for ~8 ms an iteration on an H100 machine, more than the
    GPU's own work up to 512 px (3 ms). A job that leaves the batch, or the next stage, makes a
    new one."""

    def __init__(self, lead: Transfer, images: torch.Tensor, objective: _Objective, optimizer: Optimizer) -> None:
        """`lead`: a job of the batch, whose network, layers, precision and optimiser are the batch's
        (`batch_key`)."""
        p = lead.params
        self.net, self.layers = lead.loop_net, frozenset(p.content_layers + p.style_layers)
        self.images, self.objective, self.optimizer = images, objective, optimizer
        self.bf16, self.clamp, self.eager = lead.bf16, p.optimizer == "adam", 0
        self.device_type = images.device.type
        self.fused = FUSED_CONV_RELU and self.bf16 and self.device_type == "cuda" and not COMPILE
        self.stream = _side_stream(images.device) if CUDA_GRAPHS and self.device_type == "cuda" else None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.captured: torch.Tensor | None = None

    def __call__(self, left: int) -> _Losses:
        """Runs one (`left`: the stage's iterations left, this one included); its losses."""
        if self.stream is not None and self.graph is None and self.eager >= GRAPH_AFTER and left >= GRAPH_LEFT:
            self._capture()
        if self.graph is not None:
            self.graph.replay()
            terms = self.captured.clone()  # the next replay overwrites the graph's own
        elif self.stream is not None:
            self.stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.stream):
                terms = self._kernels()
            torch.cuda.current_stream().wait_stream(self.stream)
            terms = terms.clone()  # on this stream, which reads it
        else:
            terms = self._kernels()
        self.eager += self.graph is None
        self.optimizer.steps += 1
        return _Losses(terms)

    def _capture(self) -> None:
        """Capture the iteration as a CUDA graph. The graph's own memory pool holds the iteration's
        tensors until its stage ends (peak memory 612 → 990 MB at 512 px on an H100): where the
        device has room for eager iterations only, the stage goes on eagerly rather than failing
        the batch. The room is checked first (`room_for_graph`): an eager iteration's tensors,
        at most the job's peak above what it holds now, times `GRAPH_ROOM` (`GRAPH_ROOM_MIN` at
        least). A capture that runs out of memory all the same (the room taken in between, or the
        estimate short) has its graph kept (`_abandon`), what it left undone in the allocator
        finished (`unwind_capture`, hence a pool of our own), and the stream it left current put
        back (the graph's context restores it only after ending the capture, which raised). Other
        errors are bugs, and raised."""
        self.images.grad = None
        device = self.images.device
        tensors = torch.cuda.max_memory_allocated(device) - torch.cuda.memory_allocated(device)
        need = max(GRAPH_ROOM_MIN, int(GRAPH_ROOM * tensors))
        if not room_for_graph(device, need):
            log.warning("no room for a CUDA graph of this stage (~%d MB); the stage runs eagerly", need // 2**20)
            self.stream = None
            return
        graph, pool, stream = torch.cuda.CUDAGraph(), torch.cuda.graph_pool_handle(), torch.cuda.current_stream(device)
        reserved = torch.cuda.memory_reserved(device)
        try:
            with _gc_paused(), torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                captured = self._kernels()
        except RuntimeError as error:
            # the allocator's error, or ending the capture it broke off complaining first
            out_of_memory = next((e for e in (error, error.__context__) if e is not None and is_out_of_memory(e)), None)
            if out_of_memory is None:
                raise
            torch.cuda.set_stream(stream)
            unwind_capture(device, pool)
            _abandon(graph)
            log.warning("a CUDA graph of this stage did not fit (%s); the stage runs eagerly",
                        str(out_of_memory).strip().splitlines()[0])
            self.stream = None
            return
        log.debug("a CUDA graph's pool took %d MB, ~%d MB checked for", (torch.cuda.memory_reserved(device) - reserved) // 2**20,
                  need // 2**20)
        self.graph, self.captured = graph, captured

    def _kernels(self) -> torch.Tensor:
        """The iteration's device work; its loss terms stacked (`TERMS`), at the points kept
        (`_Objective.kept_terms`)."""
        images = self.images
        images.grad = None
        terms = (_compiled_terms() if COMPILE else _terms)(self.net, self.layers, self.objective, images, self.bf16,
                                                           self.fused)
        total = terms[TERMS.index("total")]
        total.sum().backward()  # each image's gradient is its own loss's
        rows = images.detach().view(len(images), -1)
        self.optimizer.kernels(rows, images.grad.view(len(images), -1), total.detach())
        if self.clamp:
            rows.clamp_(0, 1)
        return self.objective.kept_terms(terms.detach(), self.optimizer.accepted)


def _abandon(graph: torch.cuda.CUDAGraph) -> None:
    """Keep a broken capture's graph for the life of the process, past its exit too: a reference
    the interpreter never drops (`_ABANDONED`)."""
    _ABANDONED.append(graph)
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(graph))


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No garbage collection during a capture: collecting a CUDA graph (or another CUDA object)
    there is a call CUDA refuses while a stream captures, and breaks the capture (torch stopped
    collecting before each capture in 2.9: pytorch/pytorch#161037)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@functools.cache
def _side_stream(device: torch.device) -> torch.cuda.Stream:
    """The one stream of a device that eager iterations run on before their capture. cuBLAS keeps
    a workspace (32 MiB on an H100), visible to the allocator and never freed, for every stream it
    ran on; a new stream per stage took the next of PyTorch's pool of 32 job after job. (A worker's
    lone default 512 px job had peaked at 1610 MB on an H100, where a fresh process's peaked at
    842; with this, and each stage's iteration let go at its end, both peaked at 650 MB on an
    H200.)"""
    return torch.cuda.Stream(device)


def _terms(net, layers: frozenset[str], objective: _Objective, images: torch.Tensor, bf16: bool,
           fused: bool) -> torch.Tensor:
    """The network's passes and the batch's loss terms, stacked (`TERMS`)."""
    with torch.autocast(images.device.type, torch.bfloat16, enabled=bf16, cache_enabled=False):
        features = net(images, layers, fused)
    terms = objective(features, images)
    return torch.stack([terms[name] for name in TERMS])


@functools.cache
def _compiled_terms() -> Callable[..., torch.Tensor]:
    """`_terms` through torch.compile (TorchInductor): the passes between the convolutions (bias,
    ReLU, pooling, casts, the losses' elementwise terms) fused, forward and backward. Compiled at
    a stage's first (eager) iteration, before any CUDA graph capture, and again for each new
    shape (stage size or batch size): dynamic sizes did not make one compilation serve every
    size on the CPU (BENCHMARKS.md)."""
    return torch.compile(_terms)


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
    return freed_on_out_of_memory(lambda: _run([_Job(t, m.callback, m.ended) for t, m in zip(transfers, members)]))


def _run(jobs: list[_Job], checkpoint: dict | None = None) -> list[Result | Exception]:
    """The batch's stages on its device, made the current one: a stream's, a graph capture's and
    the allocator's calls without a device are the current device's, device 0 unless set, whatever
    device a job names (`cuda:1`)."""
    device = jobs[0].transfer.device
    with torch.cuda.device(device) if device.startswith("cuda") else contextlib.nullcontext():
        return _stages(jobs, checkpoint)


def _stages(jobs: list[_Job], checkpoint: dict | None) -> list[Result | Exception]:
    lead = jobs[0].transfer
    device = lead.device
    start = time.perf_counter()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    first_stage, done, images, state = 0, 0, None, None
    if checkpoint is not None:
        first_stage, done, images = checkpoint["stage"], checkpoint["iteration"], checkpoint["image"].to(device)
        state = checkpoint.get("optimizer") if checkpoint.get("version") == CHECKPOINT_VERSION else None
    optimizer, rate = None, _Rate()
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
        optimizer = _optimizer(active, images, optimizer, state)
        objective, state, last_read = _Objective(active, lead._tv(stage)), None, time.monotonic()
        iteration = _Iteration(lead, images, objective, optimizer)
        while done - stage_start < stage.iterations and active:
            losses = iteration(stage.iterations - (done - stage_start))
            done += 1
            rate.count(done)
            for row, job in enumerate(active):
                job.last = losses, row
            if done - stage_start == stage.iterations or time.monotonic() - last_read >= READ_SECONDS:
                for job, values in zip(active, losses.rows()):
                    if not all(math.isfinite(v) for v in values.values()):
                        job.outcome = FloatingPointError(f"the loss diverged by iteration {done}: {values}")
                last_read = time.monotonic()
            for row, job in enumerate(active):
                if job.outcome is not None or job.callback is None:
                    continue
                try:
                    stop = job.callback(_iterate(job, index, done, rate, images, row, optimizer, start))
                except FloatingPointError as error:  # it read a loss gone non-finite before the check above
                    job.outcome = error
                    continue
                if stop:
                    job.outcome = job.transfer._result(index, done, images.detach()[row:row + 1],
                                                       optimizer.state(row), True, job.losses(), start)
            if any(job.outcome is not None for job in active):
                keep = [row for row, job in enumerate(active) if job.outcome is None]
                for job in active:
                    if job.outcome is not None and job.ended is not None:
                        job.ended(job.outcome)
                active = [active[row] for row in keep]
                if active:
                    rows = torch.tensor(keep, device=device)
                    images = images.detach().index_select(0, rows).requires_grad_(True)
                    optimizer.keep(rows)
                    objective.keep(rows)
                    iteration = _Iteration(lead, images, objective, optimizer)
        stage_start += stage.iterations
        # the stage's graph (its pool holds an iteration's tensors) and targets go before the next
        # stage's style passes and first iterations, or the results' quality report: a stage that
        # followed another peaked 133 to 199 MB above a one-stage run of its size on an H100
        iteration = objective = None
        if not active:
            break
    for row, job in enumerate(active):
        job.outcome = job.transfer._result(len(lead.stages) - 1, done, images.detach()[row:row + 1], None, False,
                                           job.losses(), start)
        if job.ended is not None:
            job.ended(job.outcome)
    return [job.outcome for job in jobs]


def _optimizer(jobs: list[_Job], images: torch.Tensor, previous: Optimizer | None, state: dict | None) -> Optimizer:
    """This stage's for the batch's `jobs` (an image's row each): restored from a checkpoint's
    `state`, or new (an L-BFGS warm-started from the coarser stage's `previous`; an Adam at each
    job's own learning rate, which `batch_key` leaves free)."""
    rows = images.detach().view(len(images), -1)
    if jobs[0].transfer.params.optimizer == "adam":
        rates = [job.transfer.params.learning_rate for job in jobs]
        return Adam(rows, rates) if state is None else Adam.restore(rows, rates[0], state)
    return LBFGS(rows, previous) if state is None else LBFGS.restore(rows, state)


class _Rate:
    """Iterations per second since the run's first iteration ended. Before it: the targets, and
    the first passes' one-off costs (new shapes' kernels); counted in, they made a job's first ETA
    2.5 to 3.8 times the time left (`bench/running_eta.py`)."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.first = 0

    def count(self, done: int) -> None:
        if self.since is None:
            self.since, self.first = time.perf_counter(), done

    def per_second(self, done: int) -> float:
        if self.since is None or done == self.first:
            return 0.0
        return (done - self.first) / max(time.perf_counter() - self.since, 1e-9)


def _iterate(job: _Job, stage_index: int, done: int, rate: _Rate, images: torch.Tensor, row: int,
             optimizer: Optimizer, start: float) -> Iterate:
    t = job.transfer
    stage = t.stages[stage_index]
    image, (losses, _) = images.detach()[row:row + 1], job.last
    return Iterate(scale=stage_index, scales=len(t.stages), width=images.shape[-1], height=images.shape[-2],
                   iteration=done, total=t.total, elapsed=time.perf_counter() - start,
                   iterations_per_second=rate.per_second(done), rate_from=rate.first,
                   _losses=lambda: losses.rows()[row],
                   _image=lambda: t._output(image, stage),
                   _checkpoint=lambda: t._checkpoint(stage_index, done, image, optimizer.state(row)))
