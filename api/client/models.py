"""The client's view of the API's objects: thin, read-only wrappers around the JSON it returns,
so a newer server's extra fields are never lost (`data` holds them all)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TERMINAL = frozenset({"succeeded", "failed", "canceled"})


@dataclass(frozen=True)
class Job:
    """A job as the server last described it: `data` is the JSON of `GET /v1/jobs/{id}`."""

    data: dict[str, Any]

    @property
    def id(self) -> str:
        return self.data["id"]

    @property
    def status(self) -> str:
        """`queued`, `running`, `succeeded`, `failed` or `canceled`."""
        return self.data["status"]

    @property
    def done(self) -> bool:
        """It has ended (succeeded, failed or canceled) and will not change again."""
        return self.status in TERMINAL

    @property
    def params(self) -> dict[str, Any]:
        """The effective parameters: what was asked, every default and automatic choice filled in
        but `precision auto`, which the worker's device decides (`run`)."""
        return self.data["params"]

    @property
    def progress(self) -> dict[str, Any] | None:
        return self.data.get("progress")

    @property
    def queue(self) -> dict[str, Any] | None:
        """While it is queued: `position` (jobs ahead), `workers`, `starts_in_seconds` and
        `eta_seconds`, as of when it was read."""
        return self.data.get("queue")

    @property
    def result(self) -> dict[str, Any] | None:
        """`url`, `width`, `height`, `quality` once it succeeded."""
        return self.data.get("result")

    @property
    def run(self) -> dict[str, Any] | None:
        """How it ran, once it succeeded: `device`, `device_name`, `precision` (what
        `auto` chose), `seconds`, `peak_memory_mb`, `batch_size`."""
        return self.data.get("run")

    @property
    def error(self) -> dict[str, Any] | None:
        """`code` and `message` if it failed."""
        return self.data.get("error")

    @property
    def snapshots(self) -> list[dict[str, Any]]:
        return self.data.get("snapshots", [])


@dataclass(frozen=True)
class Event:
    """One event of a job: `status` (data: the job), `queue` (data: where it stands while queued,
    `Job.queue`), `progress` (data: its progress) or `snapshot` (data: `iteration`, `url`,
    `created_at`)."""

    type: str
    data: dict[str, Any]

    @property
    def job(self) -> Job | None:
        """The job, for a `status` event."""
        return Job(self.data) if self.type == "status" else None

    @property
    def ends(self) -> bool:
        """The job ended: no event follows this one."""
        return self.type == "status" and self.data["status"] in TERMINAL
