"""A job's events as a live progress bar on a terminal (tqdm): where it stands while queued, then
percent, stage, losses and the server's ETA, then how the job ended."""
from __future__ import annotations

import sys
from datetime import datetime
from typing import Any, TextIO

from tqdm import tqdm

from api.client.models import Event


class ProgressBar:
    """`show(event)` for each event of `Client.events`; `close()` at the end."""

    def __init__(self, file: TextIO = sys.stderr) -> None:
        self.bar = tqdm(total=100, bar_format="{percentage:3.0f}%|{bar}| {desc}", file=file, dynamic_ncols=True,
                        mininterval=0.2)

    def show(self, event: Event) -> None:
        job = event.job
        progress = event.data if event.type == "progress" else job.progress if job else None
        if progress:
            self.bar.n = round(progress["percent"])
        if job is not None and job.status == "succeeded":
            self.bar.n = 100
        if job is not None and job.done:
            self.bar.set_description_str(_ended(job.data), refresh=False)
        elif progress:
            self.bar.set_description_str(_running(progress), refresh=False)
        elif event.type == "queue" or (job is not None and job.queue):
            queue = event.data if event.type == "queue" else job.queue
            self.bar.set_description_str(f"queued · {standing(queue)}", refresh=False)
        elif job is not None:
            self.bar.set_description_str(job.status, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def standing(queue: dict[str, Any]) -> str:
    """Where a queued job stands (`Job.queue`): "2 jobs ahead · starts in 00:12 · ETA 00:14"."""
    ahead = queue["position"]
    parts = ["next" if ahead == 0 else f"{ahead} job{'s' if ahead != 1 else ''} ahead"]
    if queue["workers"] == 0:
        parts.append("waiting for a worker")
    elif queue["starts_in_seconds"] is not None:
        parts.append(f"starts in {tqdm.format_interval(queue['starts_in_seconds'])}")
        if queue["eta_seconds"] is not None:
            parts.append(f"ETA {tqdm.format_interval(queue['eta_seconds'])}")
    return " · ".join(parts)


def _running(progress: dict[str, Any]) -> str:
    losses = progress["losses"]
    eta = progress.get("eta_seconds")
    parts = [f"scale {progress['scale'] + 1}/{progress['scales']}",
             f"iteration {progress['iteration']}/{progress['total']}",
             f"loss {losses['total']:.3g} (content {losses.get('content', 0):.3g}, style {losses.get('style', 0):.3g})",
             f"ETA {tqdm.format_interval(eta) if eta is not None else '?'}"]
    return " · ".join(parts)


def _ended(job: dict[str, Any]) -> str:
    took = ""
    if job.get("started_at") and job.get("finished_at"):
        seconds = (datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["started_at"])).total_seconds()
        took = f" in {tqdm.format_interval(seconds)}"
    return f"{job['status']}{took}"
