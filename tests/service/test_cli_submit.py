"""`atelier submit` and `atelier jobs` as a person at a terminal uses them, against `atelier run`:
real subprocesses, a live progress bar, Ctrl-C (SIGINT) asking whether to cancel, one-line errors
with exit status 2, and `--help` that shows every default."""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from api.client import Client
from shared.cli import build_parser
from api.stack import free_port
from tests.service.helpers import ROOT, wait_for


@pytest.fixture
def files(tmp_path, images) -> dict[str, Path]:
    for name, data in images.items():
        (tmp_path / f"{name}.png").write_bytes(data)
    return {name: tmp_path / f"{name}.png" for name in images}


@pytest.fixture
def env(live_stack, stack_key) -> dict[str, str]:
    return {"ATELIER_URL": live_stack.url, "ATELIER_KEY": stack_key}


def atelier(*args: str | Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shared.cli", *map(str, args)], cwd=ROOT, env=os.environ | env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def start(*args: str | Path, env: dict[str, str], stderr: Path, stdin=subprocess.PIPE) -> subprocess.Popen:
    with open(stderr, "w") as err:
        return subprocess.Popen([sys.executable, "-m", "shared.cli", *map(str, args)], cwd=ROOT, env=os.environ | env,
                                stdin=stdin, stdout=subprocess.PIPE, stderr=err, text=True)


def test_submit_shows_progress_and_saves_the_result_and_snapshots(files, env, tmp_path):
    out = tmp_path / "out.png"
    done = atelier("submit", files["content"], files["style"], "-o", out, "--size", "64", "--iterations", "12",
                   "--snapshot-every", "4", "--snapshots", tmp_path / "snaps", env=env)
    assert done.returncode == 0, done.stderr
    frames = done.stderr.replace("\r", "\n")
    assert re.search(r"job [0-9a-f-]{36} queued", frames)
    assert re.search(r"\d+%\|.*\| scale 1/1 · iteration \d+/12 · loss [\d.e+-]+ \(content .*, style .*\) · ETA ", frames)
    assert re.search(r"100%\|#*\| succeeded in ", frames.replace("█", "#")), frames[-500:]
    assert "Traceback" not in done.stderr
    assert re.search(rf"{re.escape(str(out))}: 64x48, 12 iterations in [\d.]+ s on CPU \(\d+ cores\), (bf16|fp32); "
                     r"style distance [\d.]+, content distance [\d.]+$",
                     done.stderr.strip()), done.stderr[-300:]
    assert Image.open(out).size == (64, 48)
    assert sorted(p.name for p in (tmp_path / "snaps").iterdir()) == ["000004.png", "000008.png"]

    job_id = re.search(r"job ([0-9a-f-]{36}) queued", frames).group(1)
    listed = atelier("jobs", "list", env=env)
    assert listed.returncode == 0 and re.search(rf"{job_id}\s+succeeded\s+100%", listed.stdout), listed.stdout
    got = atelier("jobs", "get", job_id, env=env)
    assert json.loads(got.stdout)["result"]["width"] == 64
    again = atelier("jobs", "result", job_id, "-o", tmp_path / "again.png", env=env)
    assert again.returncode == 0 and (tmp_path / "again.png").read_bytes() == out.read_bytes()
    wrong = atelier("jobs", "result", job_id, "-o", tmp_path / "again.jpg", env=env)
    assert wrong.returncode == 2 and "result is png; name the output .png" in wrong.stderr
    assert atelier("jobs", "delete", job_id, env=env).returncode == 0
    gone = atelier("jobs", "get", job_id, env=env)
    assert gone.returncode == 2 and gone.stderr.strip() == f"atelier jobs get: error: 404 Not Found: no job {job_id}"


def test_a_queued_job_shows_where_it_stands_until_it_starts(files, env, tmp_path):
    err = tmp_path / "stderr"
    with Client(env["ATELIER_URL"], env["ATELIER_KEY"]) as client:
        ahead = client.submit(files["content"], files["style"], size=128, scales=1, iterations=1000, snapshot_every=0)
        wait_for(lambda: (client.get(ahead).progress or {}).get("eta_seconds"), timeout=120,
                 what="the job ahead to report its ETA")
        cli = start("submit", files["content"], files["style"], "-o", tmp_path / "out.png", "--size", "32",
                    "--iterations", "2", env=env, stderr=err, stdin=subprocess.DEVNULL)
        wait_for(lambda: re.search(r"queued · (next|\d+ jobs? ahead) · starts in \d\d:\d\d · ETA \d\d:\d\d",
                                   err.read_text()), timeout=60, what="the bar to show where the job stands")
        job_id = re.search(r"job ([0-9a-f-]{36}) queued", err.read_text()).group(1)
        listed = atelier("jobs", "list", "--status", "queued", env=env)
        assert re.search(rf"^{job_id}\s+queued\s+-\s+\S+\s+(next|\d+ jobs? ahead) · starts in \d\d:\d\d · ETA \d\d:\d\d$",
                         listed.stdout, re.MULTILINE), listed.stdout
        client.cancel(ahead)
        assert cli.wait(timeout=120) == 0, err.read_text()[-500:]
    assert re.search(r"100%\|#*\| succeeded in ", err.read_text().replace("█", "#"))


def test_no_wait_prints_the_id_and_jobs_result_cancel_follow_up(files, env, tmp_path):
    submitted = atelier("submit", files["content"], files["style"], "--size", "128", "--iterations", "1000",
                        "--no-wait", env=env)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert re.fullmatch(r"[0-9a-f-]{36}", job_id)
    early = atelier("jobs", "result", job_id, "-o", tmp_path / "r.png", env=env)
    assert early.returncode == 2 and "has not ended" in early.stderr and "--wait" in early.stderr
    canceled = atelier("jobs", "cancel", job_id, env=env)
    assert canceled.returncode == 0 and job_id in canceled.stdout
    waited = atelier("jobs", "result", job_id, "-o", tmp_path / "r.png", "--wait", env=env)
    assert waited.returncode == 1 and f"job {job_id} canceled" in waited.stderr
    assert not (tmp_path / "r.png").exists()


def test_ctrl_c_asks_and_cancels_on_yes(files, env, tmp_path):
    err = tmp_path / "stderr"
    process = start("submit", files["content"], files["style"], "-o", tmp_path / "out.png", "--size", "128",
                    "--iterations", "1000", env=env, stderr=err)
    wait_for(lambda: "iteration" in err.read_text(), timeout=120, what="the job to run")
    process.send_signal(signal.SIGINT)
    process.communicate("y\n", timeout=60)
    assert process.returncode == 130
    output = err.read_text()
    job_id = re.search(r"job ([0-9a-f-]{36}) queued", output).group(1)
    assert f"Cancel job {job_id}? [y/N]" in output and "Traceback" not in output
    with Client(env["ATELIER_URL"], env["ATELIER_KEY"]) as client:
        assert client.wait(job_id, timeout=60).status == "canceled"
    assert not (tmp_path / "out.png").exists()


def test_ctrl_c_without_an_answer_leaves_the_job_running(files, env, tmp_path):
    err = tmp_path / "stderr"
    process = start("submit", files["content"], files["style"], "-o", tmp_path / "out.png", "--size", "128",
                    "--iterations", "1000", env=env, stderr=err, stdin=subprocess.DEVNULL)
    wait_for(lambda: "iteration" in err.read_text(), timeout=120, what="the job to run")
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=60)
    assert process.returncode == 130
    output = err.read_text()
    job_id = re.search(r"job ([0-9a-f-]{36}) queued", output).group(1)
    assert f"job {job_id} goes on; save its result later with: atelier jobs result {job_id} -o " in output
    with Client(env["ATELIER_URL"], env["ATELIER_KEY"]) as client:
        assert client.get(job_id).status == "running"
        client.cancel(job_id)


def test_errors_are_one_line_with_exit_status_2(files, env, tmp_path):
    bad = atelier("submit", files["content"], files["style"], "-o", tmp_path / "out.png", "--size", "5", env=env)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "atelier submit: error: 422 Invalid request: params.size: must be between 32 and 8192, not 5"]
    down = atelier("submit", files["content"], files["style"], "-o", tmp_path / "out.png",
                   env=env | {"ATELIER_URL": f"http://127.0.0.1:{free_port()}"})
    assert down.returncode == 2 and "Traceback" not in down.stderr
    assert re.fullmatch(r"atelier submit: error: cannot reach http://127\.0\.0\.1:\d+ \(.*\); is the server running\?",
                        down.stderr.strip().splitlines()[-1])
    for args, message in (((), "-o OUT is required (or --no-wait)"),
                          (("-o", tmp_path / "out.gif"), "unknown image extension '.gif'"),
                          (("-o", tmp_path / "nowhere" / "out.png"), "does not exist")):
        result = atelier("submit", files["content"], files["style"], *args, env=env)
        assert result.returncode == 2 and message in result.stderr, result.stderr
    missing = atelier("submit", tmp_path / "nothing.png", files["style"], "-o", tmp_path / "out.png", env=env)
    assert missing.returncode == 2 and "No such file or directory" in missing.stderr


def test_a_bad_limit_url_or_key_is_one_line_with_exit_status_2():
    """No server needed: each is refused before anything is sent."""
    unreachable = {"ATELIER_URL": "http://127.0.0.1:9", "ATELIER_KEY": "k"}
    for limit in ("-1", "0", "x"):
        result = atelier("jobs", "list", "--limit", limit, env=unreachable)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.splitlines()[-1] == (
            f"atelier jobs list: error: argument --limit: must be a positive integer, not {limit!r}")
    for args, message in ((("--url", "http://[::1"), "the server URL 'http://[::1' is not valid"),
                          (("--key", "clé"), "the API key must be printable ASCII")):
        result = atelier("jobs", "get", "00000000-0000-0000-0000-000000000000", *args, env=unreachable)
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
        assert result.stderr.startswith(f"atelier jobs get: error: {message}"), result.stderr


def test_every_option_of_every_command_shows_its_default():
    """`--help` of every command says what an omitted option means: its default, or when it is required."""
    def commands(parser: argparse.ArgumentParser, name: str = "atelier"):
        yield name, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, subparser in action.choices.items():
                    yield from commands(subparser, f"{name} {sub}")

    missing = [f"{name} {action.option_strings[-1]}" for name, parser in commands(build_parser())
               for action in parser._actions
               if action.option_strings and action.help != argparse.SUPPRESS and action.dest != "help"
               and not action.required and not re.search(r"\((default: |required unless)", action.help or "")]
    assert missing == []
