"""The memory and time model (shared.capacity): what it is fed, how it judges a fleet, and the
calibration file it reads."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from shared import capacity
from shared.capacity import MB, Device, Model, Workload, too_big, workload
from shared.params import Params, plan, stage_dims

GiB = 2**30


def test_the_workload_follows_the_engines_plan_and_stage_sizes():
    params = Params(size=512)  # 128 -> 256 -> 512 px, 150 + 43 + 20 iterations
    w = workload(params, (1024, 768), [(800, 600), (600, 800)])
    stages = plan(params)
    assert w.iterations == 213 and w.stages == 3
    assert w.peak_megapixels == 512 * 384 / MB
    assert w.megapixel_iterations == pytest.approx(sum(s.iterations * (s.longest * s.longest * 3 / 4) / MB
                                                       for s in stages))
    # both styles at every stage, fitted to the stage's longest side, each in its own aspect
    assert w.style_megapixels == pytest.approx(2 * sum(s.longest * s.longest * 3 / 4 for s in stages) / MB)
    assert w.peak_style_megapixels == 512 * 384 / MB
    doubled = workload(Params(size=512, style_scale=2.0), (1024, 768), [(800, 600)])
    assert doubled.peak_style_megapixels == pytest.approx(4 * w.peak_style_megapixels)
    assert stage_dims(1024, 768, 512) == (384, 512)  # (height, width), as the engine runs it


MODEL = Model(measured=True, source="test", base_mb=1000, mb_per_megapixel=2000, mb_per_style_megapixel=500,
              overhead_seconds=1, seconds_per_iteration=0.01, seconds_per_megapixel_iteration=2,
              seconds_per_style_megapixel=0.5, seconds_per_stage=0.25)


def test_the_model_is_linear_in_the_workload():
    w = Workload(iterations=100, megapixel_iterations=10, style_megapixels=4, peak_megapixels=0.5,
                 peak_style_megapixels=1, stages=2)
    assert MODEL.memory_mb(w) == 1000 + 2000 * 0.5 + 500 * 1
    assert MODEL.seconds(w) == 1 + 0.01 * 100 + 2 * 10 + 0.5 * 4 + 0.25 * 2


def test_an_entry_fitted_to_one_stage_runs_only_has_no_cost_per_stage(tmp_path):
    """Entries written before the model had a cost per stage read as 0 for it."""
    path = tmp_path / "calibration.json"
    capacity.write(path, {"cpu-bf16": MODEL})
    entry = json.loads(path.read_text())
    del entry["cpu-bf16"]["seconds_per_stage"]
    path.write_text(json.dumps(entry))
    assert capacity.models(path)["cpu-bf16"] == replace(MODEL, seconds_per_stage=0.0)


# a model for bf16 beside MODEL: the same but for less memory per megapixel
HALF = Model(**{**MODEL.__dict__, "mb_per_megapixel": 1000})


@pytest.fixture
def calibration(tmp_path, monkeypatch):
    """A calibration file of the test's own (MODEL for CUDA in bf16 and CPUs in fp32, HALF for CPUs
    in bf16), read in place of the repository's."""
    path = tmp_path / "calibration.json"
    capacity.write(path, {"cuda-bf16": MODEL, "cpu-fp32": MODEL, "cpu-bf16": HALF})
    monkeypatch.setattr(capacity, "CALIBRATION", path)
    return path


def test_a_job_is_refused_only_when_it_fits_on_no_live_device(calibration):
    w = workload(Params(size=2048, scales=1), (1000, 1000), [(1000, 1000)])  # 4 MP: ~1000 + 8000 + 2000 MB
    need = MODEL.memory_mb(w)
    assert 10_000 < need < 12_000
    small, big = Device("cuda", 8 * GiB, "bf16"), Device("cuda", 80 * GiB, "bf16")
    assert too_big(w, []) is None                       # no live worker: nothing to judge by
    assert too_big(w, [small, big]) is None             # one device holds it
    assert too_big(w, [small, Device("cpu", None, "fp32")]) is None  # a device of unknown size may
    why = too_big(w, [small, Device("cuda", 11 * GiB, "bf16")])  # 90% of 11 GiB < 11,000 MB
    assert why.startswith(f"needs ~{need / 1024:.1f} GiB of device memory, the largest worker device has 11.0 GiB")
    assert capacity.limiting_field(w, "cuda", "bf16") == "size"
    by_style = workload(Params(size=256, scales=1, style_scale=4.0), (1000, 1000), [(1000, 1000)])
    assert capacity.limiting_field(by_style, "cuda", "bf16") == "style_scale"


def test_a_devices_precision_picks_its_model(calibration):
    """A CPU that runs jobs in bf16 needs less memory for them than one in fp32: the same job can
    fit the one and not the other."""
    w = workload(Params(size=2048, scales=1), (1000, 1000), [(1000, 1000)])  # 4 MP
    fp32, bf16 = MODEL.memory_mb(w), HALF.memory_mb(w)
    assert bf16 < 9 * GiB * 0.9 / MB < fp32
    assert too_big(w, [Device("cpu", 9 * GiB, "bf16")]) is None
    assert too_big(w, [Device("cpu", 9 * GiB, "fp32")]).startswith(f"needs ~{fp32 / 1024:.1f} GiB")
    assert capacity.predict(w, "cpu", "bf16").memory_mb == bf16
    assert capacity.batch_size(w, "cpu", "bf16", 40 * GiB, 8) > capacity.batch_size(w, "cpu", "fp32", 40 * GiB, 8)


def test_a_precision_never_calibrated_borrows_its_kinds_model_and_says_it_is_estimated(calibration, monkeypatch):
    """A GPU without native bf16 runs fp32, which no entry covers: it borrows cuda-bf16's, with
    twice the memory per megapixel (fp32 activations), so what it cannot hold is refused."""
    w = workload(Params(size=2048, scales=1), (1000, 1000), [(1000, 1000)])  # 4 MP
    borrowed = capacity.model("cuda", "fp32")
    assert not borrowed.measured and borrowed.source.startswith("estimated from cuda-bf16")
    assert borrowed.memory_mb(w) - MODEL.base_mb == 2 * (MODEL.memory_mb(w) - MODEL.base_mb)
    assert borrowed.seconds(w) == MODEL.seconds(w)
    prediction = capacity.predict(w, "cuda", "fp32")
    assert prediction.measured is False and prediction.memory_mb == borrowed.memory_mb(w)
    assert too_big(w, [Device("cuda", 16 * GiB, "bf16")]) is None  # ~11 GB in bf16
    assert too_big(w, [Device("cuda", 16 * GiB, "fp32")]).startswith(f"needs ~{borrowed.memory_mb(w) / 1024:.1f} GiB")
    fp32_only = calibration.with_name("fp32-only.json")  # the other way round: bf16 borrows fp32's as it is
    capacity.write(fp32_only, {"cuda-fp32": MODEL})
    monkeypatch.setattr(capacity, "CALIBRATION", fp32_only)
    assert capacity.model("cuda", "bf16") == replace(MODEL, measured=False, source="estimated from cuda-fp32: test")


def test_the_prediction_says_what_it_is_for(calibration):
    w = workload(Params(size=256), (640, 480), [(640, 480)])
    p = capacity.predict(w, "cuda", "bf16").to_dict()
    assert p == {"device": "cuda", "seconds": round(MODEL.seconds(w), 1), "memory_mb": round(MODEL.memory_mb(w)),
                 "measured": True}
    assert capacity.device_kind("cuda:1") == "cuda" and capacity.device_kind("cpu") == "cpu"


def test_the_repositorys_calibration_has_cpus_in_both_precisions_and_cuda_in_bf16_all_measured():
    entries = json.loads(capacity.CALIBRATION.read_text())
    models = capacity.models()
    assert set(models) == {"cpu-bf16", "cpu-fp32", "cuda-bf16"}
    for kind in models:
        assert models[kind].measured and "bench/calibrate.py" in models[kind].source, kind
    assert "H100" in models["cuda-bf16"].source or "H200" in models["cuda-bf16"].source
    assert "--precision fp32" in models["cpu-fp32"].source
    # bf16 keeps the activations for the backward pass in half the bytes (not the rest: 18% less in all)
    assert models["cpu-bf16"].mb_per_megapixel < models["cpu-fp32"].mb_per_megapixel
    for kind, model in models.items():
        assert model.mb_per_megapixel > 0 and model.seconds_per_megapixel_iteration > 0, kind
        assert set(entries[kind]) >= {"base_mb", "mb_per_megapixel", "seconds_per_megapixel_iteration"}
    # 512 px with the defaults fits easily on an 80 GB GPU; 8192 px does not
    default = workload(Params(size=512), (1024, 768), [(1024, 768)])
    huge = workload(Params(size=8192), (1024, 768), [(1024, 768)])
    assert too_big(default, [Device("cuda", 80 * 10**9, "bf16")]) is None
    assert too_big(huge, [Device("cuda", 80 * 10**9, "bf16")]) is not None


@pytest.mark.parametrize("busy, workers, ahead, starts", [
    ([], 1, 0.0, 0.0),               # an idle worker takes it now
    ([10.0], 1, 0.0, 10.0),          # the running job ends first
    ([10.0], 1, 5.0, 15.0),          # ...then the job ahead runs
    ([10.0], 2, 0.0, 0.0),           # the other worker is idle
    ([10.0], 2, 30.0, 20.0),         # the idle one runs 20 s of the work ahead, the busy one 10 s after its job
    ([10.0, 30.0], 2, 15.0, 25.0),   # the job ahead waits 10 s, runs 15 s; the other worker is still busy then
    ([5.0, 5.0, 50.0], 2, 0.0, 5.0),  # more busy than live (one stopped): the two soonest free count
])
def test_a_queued_job_starts_when_the_work_ahead_is_shared_out(busy, workers, ahead, starts):
    assert capacity.starts_in(busy, workers, ahead) == pytest.approx(starts)


def test_with_no_worker_nothing_starts():
    with pytest.raises(ValueError):
        capacity.starts_in([], 0, 0.0)


def test_a_workers_pace_scales_its_predicted_time_not_its_memory():
    w = Workload(iterations=100, megapixel_iterations=10, style_megapixels=4, peak_megapixels=0.5,
                 peak_style_megapixels=1)
    model, slow = capacity.predict(w, "cpu", "bf16"), capacity.predict(w, "cpu", "bf16", pace=2.5)
    assert slow.seconds == pytest.approx(2.5 * model.seconds) and slow.memory_mb == model.memory_mb
    report = {"device": "cpu", "name": "CPU (2 cores)", "memory_bytes": GiB, "precision": "bf16"}
    assert Device.from_report(report).pace == 1.0  # before its first job
    assert Device.from_report(report | {"pace": 2.5}).pace == 2.5


def test_a_workers_pace_is_set_by_its_typical_job_not_one_slow_one():
    assert capacity.pace([(2.0, 1.0), (2.2, 1.0), (9.0, 1.0)]) == pytest.approx(2.2)  # the third shared the device
    assert capacity.pace([(1.5, 1.0)]) == pytest.approx(1.5)


def test_a_workers_pace_is_set_by_its_long_jobs_not_a_run_of_thumbnails():
    thumbnails, large = [(0.3, 0.1)] * 8, (6.0, 10.0)  # the model's fixed costs fit tiny jobs least well
    assert capacity.pace([*thumbnails, large]) == pytest.approx(0.6)  # an unweighted median: 3.0, five times off
    assert capacity.pace([*thumbnails, large, (7.0, 10.0), (65.0, 10.0)]) == pytest.approx(0.7)


def test_no_runs_tell_no_pace():
    with pytest.raises(ValueError):
        capacity.pace([])


@pytest.mark.parametrize("size", [32, 256, 1024])
@pytest.mark.parametrize("key", ["cpu-bf16", "cuda-bf16"])
def test_a_jobs_timeline_ends_where_its_prediction_does(size, key, calibration):
    """Stage set-ups included (the test's calibration has a cost per stage)."""
    kind, precision = key.split("-")
    params, content, styles = Params(size=size), (1024, 768), [(800, 600), (640, 480)]
    line = capacity.timeline(params, content, styles, kind, precision)
    assert line.left(0) == pytest.approx(capacity.model(kind, precision).seconds(capacity.workload(params, content, styles)))
    total = sum(stage.iterations for stage in plan(params))
    assert [line.through(n) for n in (0, total // 2, total)] == sorted({line.through(n) for n in (0, total // 2, total)})
    assert line.left(total) == pytest.approx(capacity.model(kind, precision).overhead_seconds)


def test_a_timeline_counts_a_stages_style_passes_at_its_start_and_its_finer_iterations_dearer():
    line = capacity.Timeline(stages=((10, 1.0, 5.0), (10, 4.0, 20.0)), end=2.0)
    assert line.through(1) == 5.0 + 1.0
    assert line.through(10) == 15.0 and line.through(11) == 15.0 + 20.0 + 4.0
    assert line.left(10) == 20.0 + 40.0 + 2.0
