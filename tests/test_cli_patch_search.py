"""End to end: `shiftaudit patch --search` and `patch --plan` on the packaged demo model and real files: the table shows
the JSON's numbers, the plan is written, applied and stored in the patched checkpoint, bad flags exit 2 before work."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from shiftaudit.cli import app
from shiftaudit.data.synthetic import make_synthetic

DEMO = Path(__file__).resolve().parent.parent / "shiftaudit" / "assets" / "demo.safetensors"
runner = CliRunner()
ROW = re.compile(r"^\s*(\d+)\s.*?(\d\.\d{4})[\s│]+(\d\.\d{4})[\s│]+(\d\.\d{4})[\s│]+([+-]\d\.\d{4})")


def run(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    for name, n, seed in (("data.npz", 12, 90210), ("calib.npz", 40, 7)):
        images, labels, _ = make_synthetic(n, seed=seed)
        np.savez(root / name, images=images, labels=labels)
    return root


SEARCH = ("--search", "--max-shift", "1", "--search-filter", "tri3", "--max-agreement-drop", "0.05")


@pytest.fixture(scope="module")
def searched(files):
    outputs = ("--plan-out", files / "plan.json", "--json", files / "frontier.json", "--out", files / "out")
    return run("patch", DEMO, "--data", files / "data.npz", *SEARCH, *outputs, "-o", files / "chosen.safetensors")


def test_search_table_shows_the_json_numbers(files, searched) -> None:
    assert searched.exit_code == 0, searched.output
    frontier = json.loads((files / "frontier.json").read_text())
    assert frontier["schema"] == "shiftaudit/patch-search" and frontier["points"] == ["6", "13", "20"]
    assert len(frontier["configurations"]) == 27 and frontier["strategy"] == "exhaustive"
    rows = [ROW.match(line) for line in searched.stdout.splitlines()]
    shown = {int(m.group(1)): m.groups()[1:] for m in rows if m}
    configs = frontier["configurations"]
    base = configs[0]["consistency"]
    assert 0 in shown and frontier["chosen"] in shown
    assert {i for i, c in enumerate(configs) if c["pareto"]} <= set(shown)
    for i, (agreement, drop, consistency, gain) in shown.items():
        c = configs[i]
        assert (agreement, drop, consistency) == (
            f"{c['agreement']:.4f}",
            f"{c['agreement_drop']:.4f}",
            f"{c['consistency']:.4f}",
        )
        assert gain == f"{c['consistency'] - base:+.4f}"
    chosen = configs[frontier["chosen"]]
    assert chosen["agreement_drop"] <= 0.05 + 1e-9
    assert json.loads((files / "out" / "frontier.json").read_text()) == frontier
    assert (files / "out" / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert frontier["plan"] == {"version": 1, "points": chosen["plan"]}
    record = {"recalibrated": False, "calibration_images": 0}  # no --recalibrate: no configuration re-estimated
    assert json.loads((files / "plan.json").read_text()) == {**frontier["plan"], **record}


def test_search_json_records_what_an_audit_report_records(files, searched, tmp_path) -> None:
    """The search JSON's settings: the shift set, draws and preprocessing of its audits, as `eval` reports them."""
    assert searched.exit_code == 0, searched.output
    settings = json.loads((files / "frontier.json").read_text())["settings"]
    assert settings["shifts"]["max_shift"] == 1 and settings["shifts"]["count"] == 9
    assert settings["shifts"]["image_size"] == [32, 32] and settings["shifts"]["mode"] == "circular"
    assert (settings["mode"], settings["pairs"], settings["seed"]) == ("exhaustive", 5, 0)
    assert settings["preprocessing"]["size"] == [32, 32]
    res = run("eval", DEMO, "--data", files / "data.npz", "--max-shift", "1", "--json", tmp_path / "audit.json")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "audit.json").read_text())
    assert settings == {
        **{k: report["settings"][k] for k in ("shifts", "mode", "pairs", "seed", "precision")},
        "preprocessing": report["data"]["preprocessing"],
    }


RECALIBRATED_PLAN = {"version": 1, "points": {"6": {"method": "aps"}}, "recalibrated": True, "calibration_images": 40}


def test_plan_measured_with_re_estimation_warns_when_applied_without(files, tmp_path) -> None:
    plan = tmp_path / "plan\x1b[31m.json"
    plan.write_text(json.dumps(RECALIBRATED_PLAN))
    res = run("patch", DEMO, "--plan", plan)
    assert res.exit_code == 0, res.output
    assert "plan: 6: APS" in res.stdout and "warning" not in res.stdout
    warned = [line for line in res.stderr.splitlines() if line.startswith("warning: ")]
    assert warned == [
        f"warning: the figures of {tmp_path}/plan\\x1b[31m.json assume BatchNorm statistics re-estimated on 40 images, as "
        "the search measured it; add --recalibrate 40 --calibration-data DIR (the search's calibration images) to patch as "
        "measured"
    ]
    again = run("patch", DEMO, "--plan", plan, "--recalibrate", "40", "--calibration-data", files / "calib.npz")
    assert again.exit_code == 0, again.output
    assert "BatchNorm statistics re-estimated on 40" not in again.stderr


def test_plan_file_without_the_re_estimation_record_still_applies(tmp_path) -> None:
    """A plan written before the plan file said whether its numbers re-estimated BatchNorm: applied, no warning."""
    from shiftaudit.antialias import PatchPlan, Treatment, patch_model
    from shiftaudit.loading import load_model

    (tmp_path / "plan.json").write_text(json.dumps({"version": 1, "points": {"6": {"method": "aps"}}}))
    res = run("patch", DEMO, "--plan", tmp_path / "plan.json", "-o", tmp_path / "p.safetensors")
    assert res.exit_code == 0, res.output
    assert "warning" not in res.stderr
    expected = patch_model(load_model(DEMO).model, PatchPlan.of({"6": Treatment("aps")})).model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "p.safetensors").model.eval()(x), expected(x))


def test_chosen_model_stores_the_plan_and_patch_plan_rebuilds_it(files, searched) -> None:
    assert searched.exit_code == 0, searched.output
    from shiftaudit.antialias import PatchPlan, PlanFile, patch_model
    from shiftaudit.loading import load_model

    plan = PlanFile.from_json(json.loads((files / "plan.json").read_text())).plan
    saved = load_model(files / "chosen.safetensors")
    assert saved.patch_spec["version"] == 2 and PatchPlan.from_json(saved.patch_spec["plan"]) == plan
    res = run("patch", DEMO, "--plan", files / "plan.json", "-o", files / "again.safetensors", "--json", files / "again.json")
    assert res.exit_code == 0, res.output
    assert "plan: " in res.stdout
    again = load_model(files / "again.safetensors")
    expected = patch_model(load_model(DEMO).model, plan).model.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again.model.eval()(x), expected(x))
        assert torch.equal(saved.model.eval()(x), expected(x))  # no BatchNorm re-estimation was asked for
    report = json.loads((files / "again.json").read_text())
    assert report["spec"]["plan"] == plan.to_json()
    shown = run("inspect", files / "chosen.safetensors")
    assert shown.exit_code == 0, shown.output
    assert "plan: " + plan.label in " ".join(shown.stdout.split())


def test_dry_run_states_the_cost_and_writes_nothing(files, tmp_path) -> None:
    res = run("patch", DEMO, "--data", files / "data.npz", *SEARCH, "--dry-run", "--plan-out", tmp_path / "p.json")
    assert res.exit_code == 0, res.output
    assert "at most 27 configurations" in res.stdout
    assert f"{27 * (12 * 9 + 12) + 12} forward passes" in res.stdout
    assert not (tmp_path / "p.json").exists()


def test_stem_is_taken_by_the_search(files) -> None:
    res = run("patch", DEMO, "--data", files / "data.npz", *SEARCH, "--dry-run", "--stem")
    assert res.exit_code == 0, res.output
    assert "3 strided layers" in res.stdout  # the demo reads its pixels with a stride-1 conv: no stem to add


def test_recalibration_doubles_the_configurations_in_the_cost(files) -> None:
    calibration = ("--recalibrate", "40", "--calibration-data", files / "calib.npz")
    res = run("patch", DEMO, "--data", files / "data.npz", *SEARCH, "--dry-run", *calibration)
    assert res.exit_code == 0, res.output
    assert "at most 53 configurations" in res.stdout and "40 per BatchNorm re-estimation" in res.stdout


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--plan-out", "p.json"), "--plan-out belongs to --search"),
        (("--max-agreement-drop", "0.1"), "--max-agreement-drop belongs to --search"),
        (("--search",), "--search needs --data"),
        (("--search", "--data", "DATA", "--eval"), "--search measures plans and stops"),
        (("--plan", "PLAN", "--method", "aps"), "--plan gives every layer its own treatment"),
        (("--plan", "PLAN", "--stem"), "--plan gives every layer its own treatment"),
        (("--search", "--data", "DATA", "--filter", "tri3"), "--search chooses each layer's treatment"),
        (("--search", "--data", "DATA", "--circular-conv"), "--search chooses each layer's treatment"),
        (("--plan", "BAD"), "is not a patch plan"),
        (("--plan", "WRONG"), "patch plan must be a JSON object"),
    ],
)
def test_bad_flags_exit_2(files, tmp_path, extra, message) -> None:
    (tmp_path / "plan.json").write_text(json.dumps({"version": 1, "points": {"6": {"method": "aps"}}}))
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "wrong.json").write_text(json.dumps({"version": 1, "layers": {}}))
    paths = {
        "DATA": files / "data.npz",
        "PLAN": tmp_path / "plan.json",
        "BAD": tmp_path / "bad.json",
        "WRONG": tmp_path / "wrong.json",
    }
    res = run("patch", DEMO, *(paths.get(a, a) for a in extra))
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split())


def test_plan_naming_no_layer_exits_2(tmp_path) -> None:
    (tmp_path / "plan.json").write_text(json.dumps({"version": 1, "points": {"7": {"method": "aps"}}}))
    res = run("patch", DEMO, "--plan", tmp_path / "plan.json")
    assert res.exit_code == 2, res.output
    assert "no strided layer" in " ".join(res.output.split())
