"""A fresh process's first job pays for what the process loads once: the network's weights, the
quality yardstick, PyTorch's first calls and, on a GPU, CUDA's context, the cuBLAS and cuDNN
handles and the kernels CUDA loads on their first use. `warm_up` pays it with a tiny job of its
own, so that a worker can do it before it takes real ones (`worker.presence`)."""
from __future__ import annotations

import time

from PIL import Image

from shared.params import Params

from . import loop


def warm_up(device: str) -> float:
    """Runs a tiny default job on `device` (two gradients for its content and style); its seconds.
    On CUDA it runs long enough that its iteration is captured as a CUDA graph, as a real job's are."""
    started = time.perf_counter()
    iterations = loop.GRAPH_AFTER + loop.GRAPH_LEFT + 1 if device.startswith("cuda") else 1
    content = Image.linear_gradient("L").convert("RGB")
    style = Image.radial_gradient("L").convert("RGB")
    loop.stylize(content, [style], Params(size=32, scales=1, iterations=iterations), device=device)
    return time.perf_counter() - started
