"""docker-compose.yml, checked as far as a machine without Docker can: it parses, the atelier
services reach MinIO the boto3 way with MinIO's credentials, the bucket they use is the one
the init step makes, no service shares a storage volume, a profile adds a second GPU worker, and
every `atelier` command in it parses. (`docker compose config` needs the Compose plugin.)"""
from __future__ import annotations

import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from shared.cli import build_parser
from shared.config import Settings

COMPOSE = Path(__file__).resolve().parents[1] / "docker-compose.yml"
ATELIER = ("migrate", "api", "worker", "worker-2", "maintenance")


def services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_every_atelier_service_uses_the_minio_bucket_the_init_step_makes():
    all_services = services()
    minio = all_services["minio"]["environment"]
    init = " ".join(all_services["minio-init"]["command"])
    made = re.search(r"mc mb --ignore-existing local/(\S+)", init).group(1)
    for name in ATELIER:
        env = all_services[name]["environment"]
        settings = Settings.from_env(env)
        url = urlsplit(settings.storage_url)
        assert (url.scheme, url.netloc) == ("s3", made), name
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000" and "mc alias set local http://minio:9000" in init
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (minio["MINIO_ROOT_USER"],
                                                                            minio["MINIO_ROOT_PASSWORD"])
        assert not [v for v in all_services[name].get("volumes", []) if "storage" in str(v)], name  # nothing shared
    for name in ("api", "worker", "worker-2", "maintenance"):
        assert all_services[name]["depends_on"]["minio-init"] == {"condition": "service_completed_successfully"}
    assert all_services["minio-init"]["depends_on"]["minio"] == {"condition": "service_healthy"}


def test_a_profile_runs_a_second_gpu_worker_on_another_gpu():
    all_services = services()
    first, second = all_services["worker"], all_services["worker-2"]
    assert "profiles" not in first and second["profiles"] == ["second-worker"]
    assert first["command"] == second["command"] == ["atelier", "worker"]
    devices = [s["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] for s in (first, second)]
    assert devices == [["0"], ["1"]]


def test_every_atelier_command_parses():
    parser = build_parser()
    for name in ("migrate", "worker", "worker-2"):
        command = services()[name]["command"]
        assert command[0] == "atelier"
        args = parser.parse_args(command[1:])
        assert callable(args.func)
    maintenance = services()["maintenance"]["command"]
    assert maintenance[:3] == ["celery", "-A", "worker.maintenance_app"]  # the torch-free app
    assert shlex.join(maintenance).count("--beat") == 1
