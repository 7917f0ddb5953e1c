"""Out of memory during a run: the engine raises `OutOfMemory` with the allocator's words, and
what the run held is freed, so the process can run the next job."""
from __future__ import annotations

import resource
import subprocess
import sys
import textwrap

import pytest
import torch

from shared.params import Params
from worker.engine import OutOfMemory, stylize
from worker.engine.memory import freed_on_out_of_memory, is_out_of_memory

TINY = Params(size=32, iterations=4)


def test_a_cuda_out_of_memory_error_raised_mid_run_becomes_out_of_memory(content, style):
    # torch.OutOfMemoryError is what the CUDA caching allocator raises; raised from the callback
    # (this machine has no GPU), it unwinds the run exactly as one raised inside the network would
    def callback(it):
        if it.iteration == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(OutOfMemory, match="CUDA out of memory. Tried to allocate 2.00 GiB") as caught:
        stylize(content, [style], TINY, device="cpu", callback=callback)
    # raised after the original was dropped: no chained error keeps the run's frames (the image,
    # its gradient, the optimiser's history, the network's activations) alive
    assert caught.value.__context__ is None and caught.value.__cause__ is None
    assert stylize(content, [style], TINY, device="cpu").iterations == 4  # and the next run goes ahead


def test_the_cpu_allocator_running_out_is_out_of_memory_too():
    limit = resource.getrlimit(resource.RLIMIT_DATA)
    resource.setrlimit(resource.RLIMIT_DATA, (_data_bytes() + 64 * 2**20, limit[1]))
    try:
        with pytest.raises(OutOfMemory, match="can't allocate memory"):
            freed_on_out_of_memory(lambda: torch.ones(2**30, dtype=torch.uint8))
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, limit)
    assert freed_on_out_of_memory(lambda: torch.ones(4)).sum() == 4


def test_a_convolution_that_cannot_allocate_inside_onednn_is_out_of_memory_too():
    # in a process of its own: once oneDNN failed to allocate, that process's later convolutions
    # fail too (README, out of memory), which would break every test after this one
    program = textwrap.dedent("""
        import resource, torch
        from worker.engine.memory import OutOfMemory, freed_on_out_of_memory
        with open("/proc/self/status") as status:
            held = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmData:"))
        x, w = torch.randn(1, 64, 96, 96), torch.randn(64, 64, 3, 3)
        resource.setrlimit(resource.RLIMIT_DATA, (held, resource.getrlimit(resource.RLIMIT_DATA)[1]))
        try:
            freed_on_out_of_memory(lambda: torch.nn.functional.conv2d(x, w, padding=1))
            print("ran")
        except OutOfMemory as error:
            print("OutOfMemory:", error)
    """)
    # a fresh process tries again when this one proved nothing: now and then the heap it already
    # holds has room enough and the convolution runs, and about one time in twelve oneDNN itself
    # dies of the failed allocation (SIGSEGV, nothing printed: README, out of memory)
    for _ in range(10):
        run = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
        if run.returncode == 0 and run.stdout.strip() != "ran":
            break
    assert run.stdout.strip() == "OutOfMemory: could not create a primitive", run.stdout + run.stderr


def test_other_runtime_errors_pass_through_untouched():
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        freed_on_out_of_memory(lambda: torch.ones(2, 3) @ torch.ones(2, 3))


def _data_bytes() -> int:
    """This process's data segment now (VmData), which RLIMIT_DATA caps."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmData:"))
