"""Running out of device memory: the job that did not fit fails on its own (`OutOfMemory`), and
the memory it held is given back before the worker takes its next job.

CUDA raises `torch.OutOfMemoryError`; the CPU allocator a plain RuntimeError that says so. On the
CPU, oneDNN's convolutions allocate on their own, and PyTorch reports a failed allocation there
as "could not create a primitive" (oneDNN's out-of-memory status is dropped from the message);
which of the two fails first, when memory runs out mid-iteration, is chance. All of them mean the
same to a caller: this job, at this size, does not fit on this device now.
"""
from __future__ import annotations

import gc
from typing import Callable, TypeVar

import torch

T = TypeVar("T")
CPU_ALLOCATOR_FAILED = ("DefaultCPUAllocator: can't allocate memory", "could not create a primitive")


class OutOfMemory(RuntimeError):
    """The device ran out of memory during a run; what the run held has been freed."""


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and any(words in str(error) for words in CPU_ALLOCATOR_FAILED))


def freed_on_out_of_memory(run: Callable[[], T]) -> T:
    """`run()`; if it runs out of memory, free what it held (its frames, the CUDA cache) and raise
    `OutOfMemory` with the allocator's first line."""
    try:
        return run()
    except RuntimeError as error:  # torch.OutOfMemoryError is one
        if not is_out_of_memory(error):
            raise
        message = str(error).strip().splitlines()[0]
    # here the error and its traceback, which held the run's tensors, are gone
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    raise OutOfMemory(message)


def room_for_graph(device: torch.device, need: int) -> bool:
    """Whether a new CUDA graph's private pool can take `need` bytes: counted as the capture will
    find the device, which first gives torch's cache back to CUDA (`torch.cuda.graph`; the pool
    could not reuse it), within CUDA's free memory and the process's share of the device
    (`set_per_process_memory_fraction`)."""
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(device)
    allowed = int(torch.cuda.get_per_process_memory_fraction(device) * total)
    return min(free, allowed - torch.cuda.memory_reserved(device)) >= need


def unwind_capture(device: torch.device, pool: tuple[int, int]) -> None:
    """Finish what a broken capture into `pool` may have left undone. Where ending the capture
    raises, torch before 2.12 skips telling its allocator that the capture is over
    (pytorch/pytorch#180395); the allocator then counts it for good, and its next wait on its
    events fails an internal assertion: in the next `empty_cache` (the next capture's first
    step), or, from a destructor in garbage collection, as an abort. Ended here, and the pool
    released (the graph that held it is kept, so it never releases it twice). Where torch ended
    it itself, the allocator refuses this end, and nothing more is done."""
    try:
        torch._C._cuda_endAllocateToPool(device.index, pool)
    except RuntimeError:  # "not currently recording to mempool_id": nothing left undone
        return
    torch._C._cuda_releasePool(device.index, pool)


def free_bytes(device: str) -> int | None:
    """Memory new tensors can still get on `device`: CUDA's free memory plus what torch's cache
    holds unused; on a CPU, the machine's available memory (None where it cannot be read)."""
    if device.startswith("cuda"):
        free, _total = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        with open("/proc/meminfo") as meminfo:
            return next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return None
