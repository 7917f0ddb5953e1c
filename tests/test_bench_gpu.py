"""`bench/gpu.py` in its CPU smoke mode, so the GPU benchmark cannot rot between GPU sessions: every
part runs (our engine's two paths, pastiche, a real worker through Redis) at tiny sizes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
    for path in ("fp32", "fast", "fast_adam", "pastiche_adam"):
        assert row[path]["iterations_per_second"] > 0, path
    assert row["tflops"] > 0 and row["share_of_bf16_peak"] is None  # no bf16 peak on a CPU
    (jobs,) = report["worker"]
    assert jobs["jobs"] == 2 and jobs["jobs_per_minute"] > 0 and jobs["one_job_end_to_end_seconds"] > 0
    assert jobs["prediction"]["device"] == "cpu"
