"""A running job's `progress` object (stored on the job, published to live viewers) from the
engine's `Iterate`, with its ETA."""
from __future__ import annotations

import math
from typing import Any

from shared.capacity import Timeline
from worker.engine import Iterate


def progress_of(it: Iterate, resumed_from: int | None, timeline: Timeline | None) -> dict[str, Any]:
    """Raises FloatingPointError for a loss that is not finite: the job diverged before the engine's
    next check, and ends `diverged` as if that had seen it. NaN and infinity are never written:
    PostgreSQL's json refuses them, and they are not JSON to a viewer of the events."""
    losses = it.losses
    if not all(math.isfinite(value) for value in losses.values()):
        raise FloatingPointError(f"the loss diverged by iteration {it.iteration}: {losses}")
    eta = eta_seconds(it, timeline)
    return {"iteration": it.iteration, "total": it.total, "scale": it.scale, "scales": it.scales,
            "percent": round(100 * it.iteration / it.total, 2), "losses": losses,
            "iterations_per_second": round(it.iterations_per_second, 3),
            "eta_seconds": round(eta, 1) if eta is not None else None, "resumed_from": resumed_from}


def eta_seconds(it: Iterate, timeline: Timeline | None) -> float | None:
    """Seconds left: the model's time for what is left of the job (`timeline`), at the pace the run
    has kept against the model since its first iteration; without a timeline, the iterations left
    at the run's rate. None until there is a rate."""
    ips = it.iterations_per_second
    if ips <= 0:
        return None
    if timeline is not None and (modelled := timeline.through(it.iteration) - timeline.through(it.rate_from)) > 0:
        return (it.iteration - it.rate_from) / ips / modelled * timeline.left(it.iteration)
    return (it.total - it.iteration) / ips
