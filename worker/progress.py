"""A running job's `progress` object (stored on the job, published to live viewers) from the
engine's `Iterate`."""
from __future__ import annotations

from typing import Any

from worker.engine import Iterate


def progress_of(it: Iterate, resumed_from: int | None) -> dict[str, Any]:
    ips = it.iterations_per_second
    return {"iteration": it.iteration, "total": it.total, "scale": it.scale, "scales": it.scales,
            "percent": round(100 * it.iteration / it.total, 2), "losses": it.losses,
            "iterations_per_second": round(ips, 3),
            "eta_seconds": round((it.total - it.iteration) / ips, 1) if ips > 0 else None,
            "resumed_from": resumed_from}
