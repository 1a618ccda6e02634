"""The before/after comparison of a patch is library work: a :class:`shiftaudit.PatchReport` built in Python is the
document ``shiftaudit patch --eval --json`` writes for the same run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import shiftaudit
from shiftaudit.antialias import PatchConfig, PatchPlan, compare_patch, costs, patch_model, top1_agreement, workflow
from shiftaudit.antialias.costs import LatencyStats
from shiftaudit.antialias.report import PatchComparison, PatchLatency
from shiftaudit.data.presets import resolve_preprocessing
from tests.helpers import cli, synthetic_result, tiny_cnn

ARCH = "tests.helpers:tiny_cnn"
VOLATILE = {"timing", "environment"}


def steady_clock() -> Any:
    """Every timed forward pass takes 1 ms: the latencies of two runs are equal."""
    calls = iter(range(10**6))
    return lambda: next(calls) * 0.001


def scrub(obj: Any, also: frozenset[str] = frozenset()) -> Any:
    if isinstance(obj, dict):
        return {k: scrub(v, also) for k, v in obj.items() if k not in VOLATILE | also}
    if isinstance(obj, list):
        return [scrub(v, also) for v in obj]
    return obj


@pytest.fixture()
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.pt"
    torch.save(tiny_cnn().state_dict(), ckpt)
    data = tmp_path / "images.pt"
    torch.save({"images": torch.rand(6, 3, 16, 16), "labels": torch.arange(6) % 5}, data)
    return ckpt, data


def test_a_patch_report_built_in_python_is_what_patch_eval_writes(inputs, tmp_path, monkeypatch):
    ckpt, data = inputs
    written = tmp_path / "patch.json"
    monkeypatch.setattr(costs, "clock", steady_clock())
    res = cli(
        "patch",
        ckpt,
        "--arch",
        ARCH,
        "--raw",
        "--size",
        "16",
        "--eval",
        "--data",
        data,
        "--max-shift",
        "1",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--quiet",
        "--json",
        written,
    )
    assert res.exit_code == 0, res.output

    loaded = shiftaudit.load_model(ckpt, arch=ARCH)
    dataset = shiftaudit.load_data(
        data, preprocessing=resolve_preprocessing(None, size=16), raw=True, num_classes=loaded.num_classes
    )
    patched = patch_model(loaded.model, PatchConfig())
    before = shiftaudit.audit(loaded, dataset, max_shift=1, device="cpu", num_workers=0)
    after = shiftaudit.audit(
        dataclasses.replace(loaded, model=patched.model, patch_spec=patched.spec),
        dataset,
        max_shift=1,
        device="cpu",
        num_workers=0,
    )
    monkeypatch.setattr(costs, "clock", steady_clock())
    report = shiftaudit.PatchReport(
        model=str(ckpt),
        patch=patched,
        agreement=top1_agreement(loaded.model, patched.model, dataset),
        comparison=compare_patch(loaded.model, patched, before, after, input_shape=(1, 3, 16, 16), device=torch.device("cpu")),
    )

    expected = scrub(json.loads(written.read_text()))
    assert list(report.to_json()) == list(expected)  # the same keys, in the same order
    assert {"agreement", "before", "after", "latency_ms"} <= set(expected)
    assert scrub(json.loads(json.dumps(report.to_json()))) == expected


def test_patch_and_evaluate_in_python_is_what_patch_eval_writes(inputs, tmp_path, monkeypatch):
    """The one call: patch, re-estimate, distil, agreement, both audits and the comparison, as the command runs them."""
    ckpt, data = inputs
    written = tmp_path / "patch.json"
    monkeypatch.setattr(costs, "clock", steady_clock())
    res = cli(
        "patch",
        ckpt,
        "--arch",
        ARCH,
        "--raw",
        "--size",
        "16",
        "--eval",
        "--data",
        data,
        "--max-shift",
        "1",
        "--recalibrate",
        "4",
        "--calibration-data",
        data,
        "--distill",
        data,
        "--distill-steps",
        "2",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--quiet",
        "--json",
        written,
    )
    assert res.exit_code == 0, res.output

    loaded = shiftaudit.load_model(ckpt, arch=ARCH)
    dataset = shiftaudit.load_data(
        data, preprocessing=resolve_preprocessing(None, size=16), raw=True, num_classes=loaded.num_classes
    )
    monkeypatch.setattr(costs, "clock", steady_clock())
    steps: list[str] = []
    report = shiftaudit.patch_and_evaluate(
        loaded,
        data=dataset,
        settings=shiftaudit.AuditConfig(max_shift=1, device="cpu", num_workers=0),
        calibration=dataset,
        recalibrate=4,
        distill=dataset,
        distill_steps=2,
        on_step=lambda name, _: steps.append(name),
    )
    assert steps == ["patch", "recalibrate", "distill", "agreement", "compare"]
    doc = dataclasses.replace(report, calibration_data=str(data), distill_data=str(data)).to_json()
    expected = json.loads(written.read_text())
    assert list(doc) == list(expected)
    assert scrub(doc, frozenset({"seconds"})) == scrub(expected, frozenset({"seconds"}))


def stats(median: float, iqr: float) -> LatencyStats:
    return LatencyStats(median=median, q1=median - iqr / 2, q3=median + iqr / 2, iqr=iqr, repeats=15)


def test_latency_overhead_and_noise_come_from_the_report():
    clear = PatchLatency(stats(10.0, 0.5), stats(12.0, 0.5), (1, 3, 32, 32), "cpu")
    assert clear.overhead == pytest.approx(0.2) and not clear.too_noisy
    noisy = PatchLatency(stats(10.0, 4.0), stats(10.5, 4.0), (1, 3, 32, 32), "cpu")
    assert noisy.too_noisy and noisy.to_json()["noise_exceeds_difference"] is True
    assert noisy.to_json()["spread"]["patched"]["median"] == 10.5 and noisy.to_json()["input_shape"] == [1, 3, 32, 32]


def test_a_report_without_comparison_holds_only_the_patch(inputs):
    ckpt, _ = inputs
    patched = patch_model(tiny_cnn(), PatchConfig(filter="binomial5"))
    doc = shiftaudit.PatchReport(model=str(ckpt), patch=patched).to_json()
    assert list(doc) == ["schema", "schema_version", "model", "spec", "steps", "notes"]
    assert doc["schema"] == "shiftaudit/patch-report" and doc["spec"]["filter"] == "binomial5"
    result = synthetic_result()
    compared = shiftaudit.PatchReport(
        model="m.pt",
        patch=patched,
        agreement=0.5,
        min_agreement=0.9,
        comparison=PatchComparison(result, result, PatchLatency(stats(1.0, 0.1), stats(2.0, 0.1), (1, 3, 8, 8), "cpu")),
    )
    assert compared.agreement_too_low and list(compared.to_json())[-4:] == ["agreement", "before", "after", "latency_ms"]


def test_patch_eval_says_each_note_of_the_audits_once(tmp_path):
    """The notes of the before and after audits (here the data's, the same for both) were only in the JSON."""
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.pt"
    torch.save(tiny_cnn().state_dict(), ckpt)
    data = tmp_path / "images.npz"  # uint8 channels-last, no normalisation recorded: two notes
    np.savez(data, images=np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8), labels=np.arange(6) % 5)
    args = ["patch", ckpt, "--arch", ARCH, "--size", "16", "--eval", "--data", data, "--max-shift", "1", "--device", "cpu"]
    res = cli(*args, "--workers", "0")
    assert res.exit_code == 0, res.output
    for note in ("note: images are channels-last (N,H,W,C)", "note: ImageNet mean/std assumed: the checkpoint records"):
        assert res.stdout.count(note) == 1, res.stdout
    assert "note [" not in res.stdout  # said of both audits: no audit named
    quiet = cli(*args, "--workers", "0", "--quiet")
    assert quiet.exit_code == 0 and "mean/std assumed" not in quiet.output and "channels-last" not in quiet.output


@pytest.mark.parametrize("quiet", [False, True])
def test_patch_eval_names_the_audit_of_a_note_and_warns_of_wrong_labels_on_stderr(capsys, quiet):
    from shiftaudit.cli.patch_views import PatchSteps
    from shiftaudit.engine.runner import LABEL_MISMATCH

    mismatch = f"{LABEL_MISMATCH}: accuracy without shift is 0.0 %"
    before = dataclasses.replace(synthetic_result(), notes=["shared", "[bold]before only[/bold]", mismatch])
    after = dataclasses.replace(synthetic_result(), notes=["shared", "shared"])
    control = dataclasses.replace(synthetic_result(), notes=["shared", "[bold]before only[/bold]"])
    latency = PatchLatency(stats(1.0, 0.1), stats(2.0, 0.1), (1, 3, 8, 8), "cpu")
    report = shiftaudit.PatchReport(
        model="m.pt",
        patch=patch_model(tiny_cnn(), PatchConfig()),
        comparison=PatchComparison(before, after, latency, baseline_recalibrated=control),
    )
    PatchSteps(quiet)("compare", report)
    out, err = capsys.readouterr()
    assert err.count(f"warning [Baseline]: {mismatch}") == 1 and mismatch not in out
    if quiet:
        assert out == ""
        return
    assert out.count("shared") == 1 and "note: shared" in out
    assert out.count("before only") == 1 and "note [Baseline, Baseline recalibrated]: [bold]before only[/bold]" in out


def counting_audits(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The audits ``patch_and_evaluate`` runs, as their plans."""
    audited: list[Any] = []

    def run_plan(prepared: Any, progress: Any = None) -> Any:
        audited.append(prepared)
        return real(prepared, progress)

    real = workflow.run_plan
    monkeypatch.setattr(workflow, "run_plan", run_plan)
    return audited


def tensors() -> Any:
    torch.manual_seed(0)
    return shiftaudit.load_data((torch.rand(6, 3, 16, 16), torch.arange(6) % 5), raw=True, num_classes=5)


@pytest.mark.parametrize(
    ("pool", "config", "recalibrate"),
    [(False, None, False), (True, PatchConfig(skip=("*",)), True), (True, PatchPlan(points=()), False)],
    ids=["no-strided-layer", "all-skipped-recalibration-asked", "empty-plan"],
)
def test_a_copy_that_is_still_the_original_is_audited_once(monkeypatch, pool, config, recalibrate):
    audited = counting_audits(monkeypatch)
    data = tensors()
    report = shiftaudit.patch_and_evaluate(
        tiny_cnn(pool=pool),
        config,
        data=data,
        settings=shiftaudit.AuditConfig(max_shift=1, device="cpu", num_workers=0),
        calibration=data if recalibrate else None,
        recalibrate=4,
    )
    assert not report.patch.patched and (report.recalibration is not None) == recalibrate and len(audited) == 1
    c = report.comparison
    assert c is not None and c.after.model["patch"] == report.patch.spec and c.before.model["patch"] is None
    assert {**c.after.to_json(), "model": c.before.model} == c.before.to_json()


@pytest.mark.parametrize("change", ["circular-conv", "distill"])
def test_a_copy_changed_without_a_patch_is_audited_again(monkeypatch, change):
    audited = counting_audits(monkeypatch)
    data = tensors()
    report = shiftaudit.patch_and_evaluate(
        tiny_cnn(pool=False),
        PatchConfig(circular_conv=change == "circular-conv"),
        data=data,
        settings=shiftaudit.AuditConfig(max_shift=1, device="cpu", num_workers=0),
        distill=data if change == "distill" else None,
        distill_steps=2,
    )
    assert not report.patch.patched and len(audited) == 2
