"""`atelier submit` and `atelier jobs list|get|cancel|delete|result`: the service from a terminal,
through the client library (`api.client`).

Registering them loads only argparse and the parameter table; httpx and tqdm load when a command
runs. Exit status: 0 done, 1 the job failed or was canceled, 2 an error (one line on stderr, no
traceback), 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from shared.param_flags import add_param_flags, given_params

if TYPE_CHECKING:
    from api.client import Client, Job

FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}
INTERRUPTED = 130
CLIENT_LOG = "atelier.client"


class UsageError(Exception):
    """A mistake on the command line found before anything is sent."""


def register(subparsers: argparse._SubParsersAction) -> None:
    server = argparse.ArgumentParser(add_help=False)
    server.add_argument("--url", help="the server (default: $ATELIER_URL, else http://127.0.0.1:8000)")
    server.add_argument("--key", help="API key (default: $ATELIER_KEY; `atelier keys create NAME` makes one)")

    p = subparsers.add_parser(
        "submit", parents=[server], help="run a job on the service and save its result, with a progress bar",
        description="Submit CONTENT in the style of STYLE(s) to the service, follow it with a progress bar and save "
                    "the result at OUT. Ctrl-C asks whether to cancel the job (no answer: it goes on).")
    p.add_argument("content", help="content image (photo)")
    p.add_argument("styles", nargs="+", metavar="STYLE", help="style image(s), blended by --style-weights")
    p.add_argument("-o", "--output", type=Path, metavar="OUT",
                   help="where the result goes; its extension (.png, .jpg, .webp) sets the format "
                        "(required unless --no-wait)")
    add_param_flags(p, service=True)
    p.add_argument("--snapshot-every", type=int, metavar="N",
                   help="the server keeps an intermediate image every N iterations, 0 for none (default: the server's)")
    p.add_argument("--snapshots", type=Path, metavar="DIR",
                   help="download the intermediate images into DIR as they come (default: not downloaded)")
    p.add_argument("--webhook-url", metavar="URL", help="the server POSTs the job's end here (default: none)")
    p.add_argument("--idempotency-key", metavar="KEY",
                   help="submitting again with the same key returns the same job (default: a new random one)")
    p.add_argument("--no-wait", action="store_true",
                   help="print the job id once it is queued and exit (default: follow it to the end)")
    p.set_defaults(func=lambda args: _command("submit", args, _submit))

    jobs = subparsers.add_parser("jobs", help="list, inspect, cancel and delete your jobs; save a result").add_subparsers(
        dest="jobs_command", required=True, metavar="ACTION")
    listing = jobs.add_parser("list", parents=[server], help="your jobs, newest first")
    listing.add_argument("--status", help="only jobs with this status: queued, running, succeeded, failed or canceled "
                                          "(default: all)")
    listing.add_argument("--limit", type=_positive, default=20, metavar="N",
                         help="at most N jobs (default: %(default)s)")
    listing.set_defaults(func=lambda args: _command("jobs list", args, _list))
    for name, action, what in (("get", _get, "a job, as JSON"), ("cancel", _cancel, "cancel a queued or running job"),
                               ("delete", _delete, "delete a job and its files (a running job is canceled first)")):
        command = jobs.add_parser(name, parents=[server], help=what)
        command.add_argument("job_id", metavar="JOB", help="the job's id")
        command.set_defaults(func=lambda args, name=name, action=action: _command(f"jobs {name}", args, action))
    result = jobs.add_parser("result", parents=[server], help="save a job's result image")
    result.add_argument("job_id", metavar="JOB", help="the job's id")
    result.add_argument("-o", "--output", type=Path, metavar="OUT", required=True,
                        help="where the result goes; the extension must match the job's output_format")
    result.add_argument("--wait", action="store_true",
                        help="follow a job that has not ended, with a progress bar (default: fail if it has not)")
    result.add_argument("--snapshots", type=Path, metavar="DIR",
                        help="also download its intermediate images into DIR (default: not downloaded)")
    result.set_defaults(func=lambda args: _command("jobs result", args, _result))


def _positive(text: str) -> int:
    """An argparse type: a count of at least 1, refused as a usage error otherwise."""
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    return number


def _command(name: str, args: argparse.Namespace, action: Callable[["Client", argparse.Namespace], int]) -> int:
    """Run `action` with a client; every failure is one line on stderr and exit status 2."""
    from api.client import AtelierError, Client

    _log_to_stderr(f"atelier {name}: ")
    try:
        with Client(args.url, args.key) as client:
            return action(client, args)
    except (AtelierError, UsageError, OSError) as exc:
        print(f"atelier {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"atelier {name}: interrupted", file=sys.stderr)
        return INTERRUPTED


def _log_to_stderr(prefix: str) -> None:
    """The client's notices (retries, a lost event stream) as lines on stderr, each named like an error."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(prefix + "%(message)s"))
    log = logging.getLogger(CLIENT_LOG)
    log.addHandler(handler)
    log.propagate = False


def _submit(client: "Client", args: argparse.Namespace) -> int:
    if args.output is None and not args.no_wait:
        raise UsageError("-o OUT is required (or --no-wait)")
    params = given_params(args)
    if args.output is not None:
        params["output_format"] = _format(args.output)
    if args.snapshot_every is not None:
        params["snapshot_every"] = args.snapshot_every
    job = client.submit(args.content, args.styles, webhook_url=args.webhook_url,
                        idempotency_key=args.idempotency_key, **params)
    if args.no_wait:
        print(job.id)
        return 0
    print(f"job {job.id} {job.status}", file=sys.stderr)
    try:
        job = _follow(client, job, args.snapshots)
    except KeyboardInterrupt:
        return _ask_to_cancel(client, job, args.output)
    return _save(client, job, args.output, args.snapshots)


def _result(client: "Client", args: argparse.Namespace) -> int:
    _format(args.output)
    job = client.get(args.job_id)
    if not job.done and not args.wait:
        raise UsageError(f"job {job.id} has not ended ({job.status}); add --wait to follow it")
    if not job.done:
        try:
            job = _follow(client, job, args.snapshots)
        except KeyboardInterrupt:
            print(f"stopped waiting; job {job.id} goes on", file=sys.stderr)
            return INTERRUPTED
    return _save(client, job, args.output, args.snapshots)


def _follow(client: "Client", job: "Job", snapshots: Path | None) -> "Job":
    """The job once it ended, its events shown as a progress bar (and its snapshots saved)."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    from api.client.progress import ProgressBar

    bar = ProgressBar()
    try:
        with logging_redirect_tqdm(loggers=[logging.getLogger(CLIENT_LOG)]):
            for event in client.events(job):
                bar.show(event)
                if event.type == "snapshot" and snapshots is not None:
                    client.download_snapshots(job, snapshots)
                job = event.job or job
    finally:
        bar.close()
    return job


def _save(client: "Client", job: "Job", output: Path, snapshots: Path | None) -> int:
    if snapshots is not None:
        client.download_snapshots(job, snapshots)
    if job.status != "succeeded":
        error = f": {job.error['code']}: {job.error['message']}" if job.error else ""
        print(f"job {job.id} {job.status}{error}", file=sys.stderr)
        return 1
    if _format(output) != job.params["output_format"]:
        raise UsageError(f"job {job.id}'s result is {job.params['output_format']}; "
                         f"name the output {_suffix(job.params['output_format'])}")
    client.download_result(job, output)
    result = job.result
    quality = ", ".join(f"{name.replace('_', ' ')} {value:.3f}" for name, value in (result["quality"] or {}).items())
    ran = f" in {job.run['seconds']:.1f} s on {job.run['device_name']}, {job.run['precision']}" if job.run else ""
    print(f"{output}: {result['width']}x{result['height']}, {job.params['iterations']} iterations{ran}"
          + (f"; {quality}" if quality else ""), file=sys.stderr)
    return 0


def _ask_to_cancel(client: "Client", job: "Job", output: Path) -> int:
    """After Ctrl-C: cancel on `y`; anything else, or no answer (end of input, as when standard
    input is not a terminal), leaves the job running."""
    from api.client import Conflict

    print(f"\nCancel job {job.id}? [y/N] ", end="", file=sys.stderr, flush=True)
    try:
        answer = sys.stdin.readline() if sys.stdin is not None else ""
    except KeyboardInterrupt:
        answer = ""
    if answer.strip().lower() not in ("y", "yes"):
        print(f"{'' if answer else chr(10)}job {job.id} goes on; save its result later with: "
              f"atelier jobs result {job.id} -o {output} --wait", file=sys.stderr)
        return INTERRUPTED
    try:
        job = client.cancel(job)
    except Conflict as exc:
        print(f"job {job.id} had already ended: {exc.detail}", file=sys.stderr)
        return INTERRUPTED
    print(f"job {job.id} " + ("canceled" if job.done else "is stopping; it ends `canceled` within a few iterations"),
          file=sys.stderr)
    return INTERRUPTED


def _list(client: "Client", args: argparse.Namespace) -> int:
    from itertools import islice

    from api.client.progress import standing

    jobs = list(islice(client.list(status=args.status, page_size=min(args.limit, 100)), args.limit))
    print(f"{'JOB':36}  {'STATUS':9}  {'DONE':>4}  {'CREATED':32}  WHERE")
    for job in jobs:
        percent = f"{job.progress['percent']:.0f}%" if job.progress else "-"
        where = standing(job.queue) if job.queue else ""
        print(f"{job.id:36}  {job.status:9}  {percent:>4}  {job.data['created_at']:32}  {where}".rstrip())
    return 0


def _get(client: "Client", args: argparse.Namespace) -> int:
    print(json.dumps(client.get(args.job_id).data, indent=2))
    return 0


def _cancel(client: "Client", args: argparse.Namespace) -> int:
    job = client.cancel(args.job_id)
    print(f"job {job.id} " + ("canceled" if job.done else "is stopping; it ends `canceled` within a few iterations"))
    return 0


def _delete(client: "Client", args: argparse.Namespace) -> int:
    client.delete(args.job_id)
    print(f"job {args.job_id} deleted")
    return 0


def _format(output: Path) -> str:
    """The output format an output file's name asks for; its folder must exist."""
    if output.suffix.lower() not in FORMATS:
        raise UsageError(f"-o {output}: unknown image extension {output.suffix!r}; use .png, .jpg or .webp")
    if not output.parent.is_dir():
        raise UsageError(f"-o {output}: folder {output.parent} does not exist")
    return FORMATS[output.suffix.lower()]


def _suffix(output_format: str) -> str:
    return next(suffix for suffix, name in FORMATS.items() if name == output_format)
