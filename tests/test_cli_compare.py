"""``shiftaudit compare``: side-by-side table with changes and significance, combined curve, refusals."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from shiftaudit.cli import app
from shiftaudit.report import figures
from shiftaudit.report.rows import compare_rows
from tests.helpers import (
    assert_clean_error,
    assert_real_png,
    cli,
    env_eval_args,
    hypothesis_settings,
    synthetic_result,
)

MANY = hypothesis_settings(60)  # each example is a compare of two small files (~50 ms)

runner = CliRunner()


def write(path: Path, result) -> Path:
    result.save_json(path)
    return path


@pytest.fixture
def pair(tmp_path):
    base = write(tmp_path / "baseline.json", synthetic_result(name="base"))
    patched = write(tmp_path / "patched.json", synthetic_result(shift=-0.05, name="patched"))
    return base, patched


def run(*args):
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


def _one_line_refusal(res, *words: str) -> None:
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


@pytest.fixture(scope="module")
def report(tiny_env):
    path = tiny_env["root"] / "report.json"
    res = cli(*env_eval_args(tiny_env, "--quiet", "--json", path))
    assert res.exit_code == 0, res.output
    return path


def _compare(report: Path, other: Path, *extra: Any):
    return cli("compare", report, other, "--names", "a,b", *extra)


JSON_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**20), 10**20),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=6),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=6,
)


def _paths(node: Any, here: tuple = ()) -> list[tuple]:
    """Every path into ``node`` (lists: their first 3 items)."""
    out = [here]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*here, k))
    elif isinstance(node, list):
        for i, v in enumerate(node[:3]):
            out += _paths(v, (*here, i))
    return out


@settings(MANY)
@given(data=st.data())
def test_damaged_reports_are_compared_or_refused_in_one_sentence(report, tmp_path, data):
    """Any field of a real report replaced by any JSON value: compare either works (exit 0) or refuses in one
    sentence with exit 2; never an internal error (exit 3). Raw NaN/Infinity/1e400 tokens and deep nesting are refused.
    Every field is read into its type (``AuditResult.from_json``), so every path is fair game; the metric entries,
    where a wrong type would bite the tables, are drawn twice as often."""
    doc = json.loads(report.read_text())
    entries = _paths(doc["metrics"], ("metrics",))[1:]
    path = data.draw(st.one_of(st.sampled_from(entries), st.sampled_from(_paths(doc)[1:])), label="field")
    value = data.draw(JSON_VALUES, label="value")
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    text = json.dumps(doc)
    token = data.draw(st.sampled_from([None, "NaN", "-Infinity", "1e400", "[" * 5000 + "]" * 5000]), label="token")
    if token is not None:
        text = text.replace('"schema_version": 1', f'"schema_version": 1, "junk": {token}')
    damaged = tmp_path / f"damaged{time.monotonic_ns()}.json"
    damaged.write_text(text)
    res = _compare(report, damaged, "--json", tmp_path / "cmp.json")
    assert res.exit_code in (0, 2), (path, value, res.output)
    if res.exit_code == 2:
        line = assert_clean_error(res)
        assert str(damaged) in line or line.startswith("error: b "), line  # the file, or the run by its --names name
    assert token is None or res.exit_code == 2


@pytest.mark.parametrize(
    "damage, needle",
    [
        (lambda d: {**d, "metrics": []}, "metrics is a list, not an object"),
        (lambda d: {**d, "data": "x"}, "data is a string, not an object"),
        (lambda d: {**d, "schema_version": True}, "schema_version is True"),
        (
            lambda d: {**d, "metrics": {**d["metrics"], "accuracy": {"none": {"value": "high"}}}},
            "metrics.accuracy.none.value is a string",
        ),
        (
            lambda d: {**d, "metrics": {**d["metrics"], "accuracy_map": {**d["metrics"]["accuracy_map"], "accuracy": [[0.5]]}}},
            "not a dh x dw grid",
        ),
    ],
)
def test_reports_of_the_wrong_shape_name_the_field(report, tmp_path, damage, needle):
    damaged = tmp_path / "damaged.json"
    damaged.write_text(json.dumps(damage(json.loads(report.read_text()))))
    assert_clean_error(_compare(report, damaged), needle, "not a", str(damaged))


@pytest.mark.parametrize(
    "text, needle",
    [
        ('{"schema": "shiftaudit/audit-report", "schema_version": NaN}', "NaN, which is not a JSON number"),
        ('{"schema": "shiftaudit/audit-report", "schema_version": Infinity}', "Infinity, which is not a JSON number"),
        ('{"schema": "shiftaudit/audit-report", "schema_version": 1e400}', "too large for a double"),
        ('{"schema": "shiftaudit/audit-report", "x": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
        ('{"schema": "shiftaudit/audit-report", "x": ' + "[" * 100 + "]" * 100 + "}", "nested more than 64 levels deep"),
        ("\xff\xfe not text", "not UTF-8 text"),
    ],
)
def test_compare_refuses_what_python_json_would_accept_or_choke_on(report, tmp_path, text, needle):
    bad = tmp_path / "bad.json"
    bad.write_bytes(text.encode("latin-1") if text.startswith("\xff") else text.encode())
    assert_clean_error(_compare(report, bad), needle)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
def test_compare_never_opens_a_fifo_or_device(report, tmp_path, kind):
    target = {"fifo": tmp_path / "pipe.json", "device": Path("/dev/zero"), "folder": tmp_path}[kind]
    if kind == "fifo":
        os.mkfifo(target)
    line = assert_clean_error(_compare(report, target))
    assert ("is a folder" if kind == "folder" else "not a regular file") in line
