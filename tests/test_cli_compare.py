"""``shiftaudit compare``: side-by-side table with changes and significance, combined curve, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shiftaudit.cli import app
from shiftaudit.report import figures
from shiftaudit.report.rows import compare_rows
from tests.helpers import assert_real_png, synthetic_result

runner = CliRunner()


def write(path: Path, result) -> Path:  # noqa: ANN001
    result.save_json(path)
    return path


@pytest.fixture
def pair(tmp_path):
    base = write(tmp_path / "baseline.json", synthetic_result(name="base"))
    patched = write(tmp_path / "patched.json", synthetic_result(shift=-0.05, name="patched"))
    return base, patched


def run(*args):  # noqa: ANN001, ANN202
    return runner.invoke(app, ["compare", *[str(a) for a in args]])


def test_table_shows_both_runs_and_the_change(pair, tmp_path):
    res = run(*pair, "--names", "baseline,blurpool")
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "baseline" in out and "blurpool" in out and "Change" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("Accuracy, no shift"))
    assert "90.0 %" in line and "95.0 %" in line and "+5.00 pt" in line
    assert "*" not in line  # [85, 94] and [90, 99] overlap: not beyond the intervals
    assert "Adversarial accuracy, max shift 2 px" in out
    assert "confidence intervals do not overlap" in " ".join(out.split())


def test_significance_rule_is_non_overlapping_intervals():
    a, b = synthetic_result(), synthetic_result(shift=-0.2)
    rows = {r.metric: r for r in compare_rows([("a", a), ("b", b)])}
    acc = rows["Accuracy, no shift"]  # [0.85, 0.94] vs [1.05, 1.14]: apart
    assert acc.significant(1) is True and acc.delta_text(1) == "+20.00 pt *"
    cons = rows["Consistency (exact, all shifts)"]  # same intervals
    assert cons.significant(1) is False and "*" not in cons.delta_text(1)
    assert rows["Accuracy over shifts, worst"].significant(1) is None  # no interval, no claim


@pytest.mark.slow
def test_three_runs_json_and_combined_curve(pair, tmp_path):
    third = write(tmp_path / "third.json", synthetic_result(shift=0.3, name="third"))
    out_dir, js = tmp_path / "cmp", tmp_path / "cmp.json"
    res = run(*pair, third, "--out", out_dir, "--json", js)
    assert res.exit_code == 0, res.output
    assert "Δ patched" in res.stdout and "Δ third" in res.stdout
    doc = json.loads(js.read_text())
    assert doc["schema"] == "shiftaudit/comparison" and [r["name"] for r in doc["runs"]] == ["baseline", "patched", "third"]
    row = next(r for r in doc["rows"] if r["metric"] == "Accuracy, no shift")
    assert row["values"] == pytest.approx([0.9, 0.95, 0.6])
    assert row["change"][0] is None and row["change"][1:] == pytest.approx([0.05, -0.3])
    assert row["significant"] == [None, False, True]
    assert_real_png(out_dir / "adversarial.png", figures.figure_pixels(figures.ADVERSARIAL_SIZE))
    assert (out_dir / "variation.png").is_file() and (out_dir / "accuracy_map.png").is_file()


def _one_line_refusal(res, *words: str) -> None:  # noqa: ANN001
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    assert "Traceback" not in res.output
    for w in words:
        assert w in lines[0]


def test_refuses_foreign_json(pair, tmp_path):
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"accuracy": 0.9}))
    _one_line_refusal(run(pair[0], foreign), "not a shiftaudit audit report")
    notjson = tmp_path / "notes.json"
    notjson.write_text("hello")
    _one_line_refusal(run(pair[0], notjson), "not JSON")
    _one_line_refusal(run(pair[0], tmp_path / "missing.json"), "does not exist")


def test_refuses_newer_schema(pair, tmp_path):
    doc = json.loads(pair[1].read_text())
    doc["schema_version"] = 99
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps(doc))
    _one_line_refusal(run(pair[0], newer), "schema version 99", "upgrade")


def test_refuses_runs_on_different_data(pair, tmp_path):
    other = synthetic_result()
    other.data["description"] = "another data set"
    _one_line_refusal(run(pair[0], write(tmp_path / "other.json", other)), "different data")
    fewer = synthetic_result()
    fewer.per_image["image_id"] = list(range(1, 41))
    _one_line_refusal(run(pair[0], write(tmp_path / "ids.json", fewer)), "other images")


def test_different_shift_sets_are_compared_with_a_note(pair, tmp_path):
    wider = write(tmp_path / "wider.json", synthetic_result(max_shift=4))
    res = run(pair[0], wider)
    assert res.exit_code == 0, res.output
    assert "note:" in res.stdout and "different shift set" in res.stdout
    assert "Adversarial accuracy, max shift 4 px" in res.stdout


def test_usage_errors(pair):
    _one_line_refusal(run(pair[0]), "at least two")
    _one_line_refusal(run(*pair, "--names", "only-one"), "--names")


@pytest.mark.parametrize(
    "damage, needle",
    [
        (lambda m: m.update(adversarial={}), "metrics.adversarial is empty"),  # was exit 3: the table read a curve it lacked
        (lambda m: m.update(variation={}), "metrics.variation is empty"),
        (lambda m: m["accuracy"].update(none={}), "metrics.accuracy.none is empty"),
        (lambda m: m.update(accuracy={}), "metrics.accuracy is empty"),
        (lambda m: m["accuracy"]["none"].pop("ci_high"), "metrics.accuracy.none.ci_high is missing"),
        (lambda m: m["accuracy_map"].pop("diagonal"), "metrics.accuracy_map.diagonal is missing"),
        (lambda m: m["consistency"]["exact"].update(value="0.9"), "metrics.consistency.exact.value is a string, not a number"),
        (lambda m: m["adversarial"].update(n=None), "metrics.adversarial.n is null, not an integer"),
        (lambda m: m["flip_examples"]["examples"][1].update(label=[]), "metrics.flip_examples.examples[1].label is a list"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_a_missing_empty_or_mistyped_entry_is_exit_2_naming_its_path(pair, tmp_path, damage, needle):
    doc = json.loads(pair[1].read_text())
    damage(doc["metrics"])
    damaged = tmp_path / "damaged.json"
    damaged.write_text(json.dumps(doc))
    _one_line_refusal(run(pair[0], damaged), str(damaged), "is not a well-formed shiftaudit audit report", f"({needle}")


def test_a_report_compares_the_same_after_a_round_trip_through_its_types(pair, tmp_path):
    from shiftaudit.result import AuditResult

    again = tmp_path / "again.json"
    AuditResult.from_json(json.loads(pair[1].read_text())).save_json(again)
    assert again.read_bytes() == pair[1].read_bytes()
    assert run(pair[0], again, "--names", "a,b").stdout == run(*pair, "--names", "a,b").stdout
