"""One parameter contract, one import direction: both front ends take the same parameters from one
table and refuse the same values in the same words; a job runs exactly what `atelier stylize`
runs; the API process and the maintenance worker never load torch."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from shared.broker import SWEEP, create_celery
from shared.cli import main as atelier
from shared.params import ParamError, Params, kind, plan, resolve, spec
from shared.schemas import engine_params
from tests.service.helpers import ROOT, submit, wait_for, wait_status


def test_a_job_without_params_runs_exactly_the_engine_defaults(client, auth, images, settings):
    job = submit(client, auth, images).get_json()
    size = min(Params.size, settings.max_size)
    assert engine_params(job["params"]) == resolve(Params(size=size), styles=1)
    assert plan(engine_params(job["params"])) == plan(Params(size=size))
    assert job["params"]["scales"] == len(plan(Params(size=size))) and job["params"]["style_weights"] == [1.0]


def _refused_values() -> list[tuple[str, object]]:
    """Just past every bound of the table, and a value outside every list of choices."""
    cases = []
    for f in fields(Params):
        s, k = spec(f), kind(f)
        if not s.service:
            continue
        if k == "int":
            cases += [(f.name, int(s.low) - 1), (f.name, int(s.high) + 1)]
        elif k == "float":
            cases += [(f.name, s.low / 2 if s.low > 0 else -1.0), (f.name, s.high * 2)]
        elif k == "names":
            cases.append((f.name, ["relu9_9"]))
        elif k == "numbers":
            cases.append((f.name, [-1.0]))
        elif f.name != "init":  # on the command line any other `--init` is an image path
            cases.append((f.name, "bogus"))
    return cases


@pytest.mark.parametrize("name, value", _refused_values(), ids=lambda v: str(v))
def test_every_bound_refuses_the_same_value_in_the_same_words_on_both_front_ends(
        client, auth, images, tmp_path, capsys, name, value):
    with pytest.raises(ParamError) as expected:
        Params.from_dict({name: value})
    response = submit(client, auth, images, {name: value})
    assert response.status_code == 422, response.get_json()
    [error] = response.get_json()["errors"]
    assert (error["field"], error["message"]) == (f"params.{name}", expected.value.message)

    flag = ["--" + name.replace("_", "-"), *map(str, value if isinstance(value, list) else [value])]
    code = atelier(["stylize", "content.png", "style.png", "-o", str(tmp_path / "out.png"), *flag])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"atelier stylize: error: {name}: {expected.value.message}"


def test_an_init_image_is_for_the_command_line_only(client, auth, images):
    response = submit(client, auth, images, {"init": "image"})
    assert response.status_code == 422
    assert response.get_json()["errors"][0] == {"field": "params.init", "message": "must be one of content, noise, not 'image'"}


@pytest.mark.slow
def test_an_api_job_and_atelier_stylize_give_byte_identical_images(live_client, live_auth, images, tmp_path):
    job = submit(live_client, live_auth, images, {"size": 32, "iterations": 3}).get_json()
    done = wait_status(live_client, live_auth, job["id"], {"succeeded", "failed", "canceled"})
    assert done["status"] == "succeeded", done["error"]
    served = live_client.get(done["result"]["url"], headers=live_auth).get_data()

    for name in ("content", "style"):
        (tmp_path / f"{name}.png").write_bytes(images[name])
    cli = subprocess.run(
        [sys.executable, "-m", "shared.cli", "stylize", "content.png", "style.png", "-o", "out.png",
         "--size", "32", "--iterations", "3", "--json"],
        cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    assert (tmp_path / "out.png").read_bytes() == served
    ran = json.loads(cli.stdout.splitlines()[-1])["params"]
    asked = {k: v for k, v in done["params"].items() if k not in ("snapshot_every", "output_format")}
    assert asked["precision"] == "auto" and ran == asked | {"precision": done["run"]["precision"]}  # what auto chose


def test_the_api_process_never_imports_torch(settings, tmp_path, images):
    """A fresh process: the app starts, a job is submitted, listed and read; torch never loaded."""
    for name in ("content", "style"):
        (tmp_path / f"{name}.png").write_bytes(images[name])
    script = f"""
import io, json, sys
from api.app import create_app
from shared import keys
from shared.config import Settings
app = create_app(Settings.from_env())
with app.extensions["atelier"].db.session() as session:
    auth = {{"Authorization": "Bearer " + keys.create_key(session, "no-torch")}}
client = app.test_client()
files = {{"content": (open("content.png", "rb"), "c.png"), "style": (open("style.png", "rb"), "s.png"),
         "params": json.dumps({{"size": 32, "iterations": 2}})}}
job = client.post("/v1/jobs", data=files, headers=auth, content_type="multipart/form-data").get_json()
assert client.get("/v1/jobs/" + job["id"], headers=auth).status_code == 200
assert client.get("/v1/jobs", headers=auth).status_code == 200
assert client.get("/v1/openapi.json").status_code == 200
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)} | settings.to_env())
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == []


def _maps_torch(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def test_the_maintenance_worker_never_loads_torch(settings, workers, worker):
    maintenance = workers(settings, ("-Q", "maintenance", "--pool", "threads"), app="worker.maintenance_app")
    create_celery(settings).send_task(SWEEP)
    wait_for(lambda: f"Task {SWEEP}[" in maintenance.output() and " succeeded in " in maintenance.output(),
             timeout=60, what="the maintenance worker to run a sweep")
    assert not _maps_torch(maintenance.process.pid)
    assert _maps_torch(worker.process.pid)  # the GPU worker does: the check sees torch where it is
