"""End to end: `shiftaudit patch` on real files: dry run, save + reload, before/after with recalibration."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision
from typer.testing import CliRunner

from shiftaudit.cli import app
from tests.helpers import (
    POSITIONAL,
    positional_model,
    write_image_folder,
)

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("patch")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4).eval()
    ckpt = root / "r18.pt"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 4, size=12)
    data = root / "data.npz"
    np.savez(data, images=images, labels=labels)
    return model, ckpt, data


def test_dry_run_lists_the_plan_and_changes_nothing(files, tmp_path):
    _, ckpt, _ = files
    res = run("patch", ckpt, "--arch", "resnet18", "--dry-run", "--size", "64")
    assert res.exit_code == 0, res.output
    assert "layer2.0.conv1" in res.stdout and "blur" in res.stdout and "stem" in res.stdout
    assert "dry run: 7 of 8" in res.stdout


def test_patch_saves_a_model_that_reloads_without_flags(files, tmp_path):
    model, ckpt, _ = files
    out = tmp_path / "aa.safetensors"
    report = tmp_path / "patch.json"
    res = run("patch", ckpt, "--arch", "resnet18", "--filter", "tri3", "-o", out, "--json", report, "--size", "32")
    assert res.exit_code == 0, res.output
    rep = json.loads(report.read_text())
    assert rep["spec"]["filter"] == "tri3" and "layer3.0.conv1" in rep["spec"]["patched"]

    from shiftaudit.antialias import patch
    from shiftaudit.loading import load_model

    loaded = load_model(out)
    assert loaded.arch == "resnet18" and loaded.patch_spec["filter"] == "tri3"
    expected = patch(model, filter="tri3").eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded.model(x), expected(x))
    # the patched checkpoint audits with no other flags
    res = run("inspect", out)
    assert res.exit_code == 0, res.output
    # the whole patch in words (it was raw JSON cut at 120 characters, mid-string)
    assert "Patched" in res.stdout and "filter tri3" in res.stdout and "layer4.0.downsample.0" in res.stdout


@pytest.mark.slow
def test_patch_eval_prints_before_after_and_latency(files, tmp_path):
    _, ckpt, data = files
    report = tmp_path / "ba.json"
    res = run(
        "patch",
        ckpt,
        "--arch",
        "resnet18",
        "--eval",
        "--data",
        data,
        "--size",
        "32",
        "--max-shift",
        "2",
        "--recalibrate",
        "8",
        "--calibration-data",
        data,
        "--device",
        "cpu",
        "--workers",
        "0",
        "--json",
        report,
    )
    assert res.exit_code == 0, res.output
    assert "Baseline" in res.stdout and "Patched (tri3)" in res.stdout and "Overhead" in res.stdout
    rep = json.loads(report.read_text())
    assert rep["recalibrated_images"] == 8 and "Baseline recalibrated" in res.stdout and "baseline_recalibrated" in rep
    assert rep["before"]["settings"]["shifts"] == rep["after"]["settings"]["shifts"]
    assert rep["latency_ms"]["patched"] > 0


def test_patch_eval_quiet_prints_no_table_and_still_writes_the_report(files, tmp_path):
    _, ckpt, data = files
    report = tmp_path / "ba.json"
    res = run(
        "patch",
        ckpt,
        "--arch",
        "resnet18",
        "--eval",
        "--data",
        data,
        "--size",
        "32",
        "--max-shift",
        "1",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--json",
        report,
        "--quiet",
    )
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == "" and "Baseline" not in res.stderr and "Overhead" not in res.stderr
    assert json.loads(report.read_text())["after"]["settings"]["shifts"]["max_shift"] == 1


def test_bad_patch_options_are_one_sentence(files):
    _, ckpt, _ = files
    res = run("patch", ckpt, "--arch", "resnet18", "--filter", "binomal5")
    assert res.exit_code == 2 and "binomial5" in res.stderr and "Traceback" not in res.output
    res = run("patch", ckpt, "--arch", "resnet18", "--eval")
    assert res.exit_code == 2 and "--data" in res.stderr
    res = run("patch", ckpt, "--arch", "resnet18", "--only", "layr3")
    assert res.exit_code == 2 and "layer3" in res.stderr


def test_rebuild_message_is_true_for_installed_and_local_factories(tmp_path):
    from shiftaudit.cli.patch_views import rebuild_message

    installed = rebuild_message(tmp_path / "m.safetensors", "safetensors", "torchvision.models:resnet18")
    assert "the package torchvision is installed here: install it wherever you evaluate the file" in installed
    assert "PYTHONPATH" not in installed
    local = rebuild_message(tmp_path / "m.safetensors", "safetensors", "tests.helpers:tiny_cnn")
    assert "the module tests.helpers must be importable: run from its folder or set PYTHONPATH" in local


@pytest.mark.parametrize(
    ("name", "fmt", "message"),
    [
        (
            "aa.onnx",
            None,
            "--output {out} ends in .onnx, but shiftaudit writes safetensors, torch.export (.pt2) or "
            "TorchScript, not ONNX; name it aa.pt2 (torch.onnx.export turns that model into ONNX).",
        ),
        (
            "aa.pt",
            None,
            "--output {out} ends in .pt, which names a torch.load file, but it would be written as "
            "safetensors; name it aa.safetensors, or pass --format torchscript.",
        ),
        (
            "aa.pth",
            "pt2",
            "--output {out} ends in .pth, which names a torch.load file, but it would be written as pt2; "
            "name it aa.pt2, or pass --format torchscript.",
        ),
        (
            "aa.pt2",
            "safetensors",
            "--output {out} ends in .pt2, which names a torch.export archive, but it would be "
            "written as safetensors; name it aa.safetensors, or pass --format pt2.",
        ),
        (
            "aa.safetensors",
            "torchscript",
            "--output {out} ends in .safetensors, which names a safetensors file, but it "
            "would be written as torchscript; name it aa.pt, or pass --format safetensors.",
        ),
    ],
)
def test_an_output_suffix_naming_another_format_is_refused_before_loading(tmp_path, name, fmt, message):
    """`patch -o aa.onnx` wrote safetensors bytes under an ONNX name (and `-o aa.pt` a file torch.load cannot read).
    Refused before the model is even read: the checkpoint here is not a model at all."""
    from tests.helpers import assert_clean_error

    bogus = tmp_path / "not-a-model.pt"
    bogus.write_bytes(b"nothing here")
    out = tmp_path / name
    res = run("patch", bogus, "--arch", "resnet18", "-o", out, *(["--format", fmt] if fmt else []))
    line = assert_clean_error(res)
    assert line == "error: " + message.format(out=out)
    assert not out.exists()


def test_a_torch_suffix_with_format_torchscript_writes_torchscript(files, tmp_path):
    _, ckpt, _ = files
    out = tmp_path / "aa.pth"
    res = run("patch", ckpt, "--arch", "resnet18", "-o", out, "--format", "torchscript", "--size", "32", "--quiet")
    assert res.exit_code == 0, res.output
    from shiftaudit.loading import load_model

    assert load_model(out).format == "torchscript"


def fake_clock(durations):
    """A perf_counter whose (start, stop) pairs are ``durations`` apart in turn (the runs alternate baseline, patched)."""
    import itertools

    steps = itertools.cycle(durations)
    state = {"t": 100.0, "calls": 0}

    def clock():
        state["calls"] += 1
        if state["calls"] % 2 == 0:
            state["t"] += next(steps)
        return state["t"]

    return clock


def patch_eval(tmp_path, monkeypatch, durations):
    from shiftaudit.antialias import costs

    monkeypatch.setattr(costs, "clock", fake_clock(durations))
    data = write_image_folder(tmp_path / "photos", classes=3, per_class=1, size=16)
    model = positional_model(tmp_path / "m.pt")
    rep = tmp_path / "patch.json"
    res = runner.invoke(
        app, ["patch", str(model), "--eval", "--data", str(data), *POSITIONAL[:-1], "--max-shift", "1", "--json", str(rep)]
    )
    assert res.exit_code == 0, res.output
    return res, json.loads(rep.read_text())["latency_ms"]


def test_latency_reports_median_and_iqr_and_stays_quiet_when_the_difference_is_clear(tmp_path, monkeypatch):
    res, lat = patch_eval(tmp_path, monkeypatch, [0.001, 0.002])  # baseline 1 ms, patched 2 ms, every time
    assert lat["baseline"] == pytest.approx(1.0) and lat["patched"] == pytest.approx(2.0)  # the medians, as before
    assert lat["repeats"] == 15 and lat["spread"]["baseline"]["repeats"] == 15
    assert lat["spread"]["patched"] == pytest.approx({"median": 2.0, "q1": 2.0, "q3": 2.0, "iqr": 0.0, "repeats": 15})
    assert lat["noise_exceeds_difference"] is False and "noise" not in res.stderr
    assert "IQR" in res.stdout


def test_latency_warns_when_noise_exceeds_the_difference(tmp_path, monkeypatch):
    # baseline 1 or 3 ms, patched 1.2 or 3.2 ms: a 0.2 ms "overhead" inside a 2 ms spread
    res, lat = patch_eval(tmp_path, monkeypatch, [0.001, 0.0012, 0.003, 0.0032])
    assert lat["spread"]["baseline"]["iqr"] == pytest.approx(2.0) and lat["noise_exceeds_difference"] is True
    warnings = [ln for ln in res.stderr.splitlines() if "noise exceeds the difference" in ln]
    assert len(warnings) == 1 and warnings[0].startswith("warning: ")
