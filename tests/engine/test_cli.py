"""`atelier stylize` as other tools call it: a real subprocess, exit codes, stdout and stderr."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def atelier(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shared.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, content, style):
    folder = tmp_path_factory.mktemp("inputs")
    content.save(folder / "content.png")
    style.save(folder / "style.jpg")
    (folder / "notes.png").write_text("hello, I am not a PNG")
    (folder / "empty.png").write_bytes(b"")
    (folder / "truncated.png").write_bytes((folder / "content.png").read_bytes()[:300])
    Image.new("L", (10_000, 10_000)).save(folder / "bomb.png", optimize=True)  # 100 Mpx in ~100 KB
    return folder


def test_stylize_json_summary_snapshots_and_progress(inputs, tmp_path):
    out = tmp_path / "out.png"
    proc = atelier("stylize", str(inputs / "content.png"), str(inputs / "style.jpg"), "-o", str(out),
                   "--size", "40", "--iterations", "4", "--scales", "1", "--seed", "3",
                   "--snapshot-every", "2", "--snapshot-dir", str(tmp_path / "snaps"), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["output"] == str(out) and (summary["width"], summary["height"]) == (40, 30)
    assert summary["iterations"] == 4 and summary["device"] == "cpu" and summary["seconds"] > 0
    assert set(summary["losses"]) == {"content", "style", "tv", "total"}
    assert set(summary["quality"]) == {"style_distance", "content_distance"}
    assert summary["params"]["seed"] == 3 and summary["params"]["precision"] in ("bf16", "fp32")  # what `auto` ran in
    assert Image.open(out).size == (40, 30)
    assert sorted(p.name for p in (tmp_path / "snaps").iterdir()) == ["out_000002.png", "out_000004.png"]
    assert "4/4" in proc.stderr  # the progress bar


def test_two_styles_with_weights_and_an_init_image(inputs, tmp_path):
    out = tmp_path / "blend.jpg"
    proc = atelier("stylize", str(inputs / "content.png"), str(inputs / "style.jpg"), str(inputs / "content.png"),
                   "--style-weights", "3", "1", "--init", str(inputs / "style.jpg"), "--preserve-color", "luminance",
                   "--size", "32", "--iterations", "2", "-o", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["params"]["style_weights"] == [3.0, 1.0]
    assert Image.open(out).format == "JPEG"


@pytest.mark.parametrize("make_args, message", [
    (lambda d: [str(d / "missing.png"), str(d / "style.jpg")], "file not found"),
    (lambda d: [str(d / "notes.png"), str(d / "style.jpg")], "not an image"),
    (lambda d: [str(d / "empty.png"), str(d / "style.jpg")], "not an image"),
    (lambda d: [str(d / "content.png"), str(d / "truncated.png")], "truncated"),
    (lambda d: [str(d / "bomb.png"), str(d / "style.jpg")], "limit"),
    (lambda d: [str(d / "content.png"), str(d / "style.jpg"), "--size", "0"], "size"),
    (lambda d: [str(d / "content.png"), str(d / "style.jpg"), "--style-weight", "-2"], "style_weight"),
    (lambda d: [str(d / "content.png"), str(d / "style.jpg"), "--style-weights", "1", "2"], "style_weights"),
    (lambda d: [str(d / "content.png"), str(d / "style.jpg"), "--style-layers", "relu9_9"], "style_layers"),
    (lambda d: [str(d / "content.png"), str(d / "style.jpg"), "--weights", str(d / "none.pth")], "not found"),
    (lambda d: [str(d / "content.png"), str(d / "style.jpg"), "--device", "tpu"], "unknown device"),
    (lambda d: [str(d / "content.png"), str(d / "style.jpg"), "--snapshot-every", "5"], "go together"),
], ids=["missing", "text", "empty", "truncated", "bomb", "size", "weight", "blend", "layer", "weights", "device", "snapshots"])
def test_user_errors_exit_non_zero_without_a_traceback(inputs, tmp_path, make_args, message):
    proc = atelier("stylize", "-o", str(tmp_path / "o.png"), "--iterations", "1", "--size", "32", *make_args(inputs))
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o.png").exists()


def test_unknown_output_extension_fails_before_any_work(inputs, tmp_path):
    proc = atelier("stylize", str(inputs / "content.png"), str(inputs / "style.jpg"), "-o", str(tmp_path / "o.xyz"))
    assert proc.returncode == 2 and "extension" in proc.stderr and "Traceback" not in proc.stderr


def test_help_has_a_flag_with_its_default_for_every_engine_parameter():
    from dataclasses import fields

    from shared.params import Params

    proc = atelier("stylize", "--help")
    assert proc.returncode == 0
    options = {" ".join(block.split()).split(" ")[0]: " ".join(block.split())
               for block in proc.stdout.split("options:")[1].split("\n  -")}
    for f in fields(Params):
        flag = "-" + f.name.replace("_", "-")
        shown = "auto" if f.default is None else " ".join(map(str, f.default)) if isinstance(f.default, tuple) else str(f.default)
        assert f"(default: {shown})" in options[flag], (flag, options.get(flag))
