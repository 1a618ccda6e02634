"""The README's first command: the demo runs with no files and explains what it found."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from shiftaudit.cli import app
from tests.helpers import (
    assert_clean_error,
    cli,
    forbid_audit,
)

runner = CliRunner()


@pytest.mark.slow
def test_demo_runs_without_files_and_explains(tmp_path):
    report = tmp_path / "demo.json"
    res = runner.invoke(app, ["demo", "--images", "16", "--max-shift", "3", "--device", "cpu", "--json", str(report)])
    assert res.exit_code == 0, res.output
    assert "Consistency" in res.stdout and "adversary" in res.stdout and "aliasing" in res.stdout
    rep = json.loads(report.read_text())
    assert rep["data"]["num_images"] == 16 and rep["settings"]["shifts"]["count"] == 49
    assert rep["metrics"]["accuracy"]["none"]["value"] >= 0.75  # the shipped model is trained


@pytest.mark.slow
def test_demo_patch_compares_baseline_and_patched(tmp_path):
    res = runner.invoke(app, ["demo", "--images", "8", "--max-shift", "1", "--device", "cpu", "--patch", "tri3", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "Baseline" in res.stdout and "Patched (tri3" in res.stdout


def test_demo_compare_antialiased_adds_the_model_trained_with_blur():
    res = runner.invoke(app, ["demo", "--images", "8", "--max-shift", "1", "--device", "cpu", "--compare-antialiased", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "Baseline" in res.stdout and "Trained with blur (tri3)" in res.stdout and "Patched" not in res.stdout


@pytest.mark.slow
def test_demo_patch_and_compare_antialiased_print_three_columns():
    res = runner.invoke(
        app,
        ["demo", "--images", "8", "--max-shift", "1", "--device", "cpu", "--patch", "tri3", "--compare-antialiased", "--quiet"],
    )
    assert res.exit_code == 0, res.output
    assert "Baseline" in res.stdout and "post hoc" in res.stdout and "with blur" in res.stdout  # headers wrap at 80 columns


def test_a_bad_demo_patch_filter_is_refused_before_any_audit(tmp_path, monkeypatch):
    forbid_audit(monkeypatch)
    res = cli("demo", "--patch", "no-such-filter", "--out", tmp_path / "report", "--json", tmp_path / "r.json")
    assert_clean_error(res, "no-such-filter")
    assert not list(tmp_path.iterdir())
