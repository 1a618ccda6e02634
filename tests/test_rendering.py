"""What people read equals what the JSON says, and the gate decides exactly at its thresholds.

Every number of the terminal table, the HTML summary, the JUnit test cases and the ``compare`` table is parsed back
and compared with the JSON value it was rendered from, to the precision shown (half a unit of the last digit shown).
The label -> JSON mapping below is written here, independently of the renderers, so a row that shows the wrong
number (say "Accuracy, random shift" printing the zero-shift value) fails. Gate boundaries: a value exactly at the
threshold passes; one ulp on the wrong side fails.
"""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from shiftaudit.cli import app
from shiftaudit.gating import Threshold, build_thresholds, evaluate_gate
from shiftaudit.report.html import render_html
from shiftaudit.report.terminal import audit_table
from shiftaudit.result import AuditResult
from tests.helpers import synthetic_result

runner = CliRunner()
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")

# ------------------------------------------------------------------------------------------------------------------
# The independent mapping: a row label -> [(JSON value, scale)] for the value cell and the CI cell.
# ------------------------------------------------------------------------------------------------------------------


def _entry_triplet(e: dict[str, Any], key: str = "value") -> tuple[list[float], list[float]]:
    return [e[key]], [e["ci_low"], e["ci_high"]]


def expected_numbers(label: str, report: dict[str, Any]) -> tuple[list[float], list[float], float]:
    """(values shown in the Value cell, values shown in the CI cell, display scale: 100 for percentages)."""
    m = report["metrics"]
    fixed = {
        "Accuracy, no shift": lambda: (*_entry_triplet(m["accuracy"]["none"]), 100),
        "Accuracy, random shift": lambda: (*_entry_triplet(m["accuracy"]["random"]), 100),
        "Consistency (exact, all shifts)": lambda: (*_entry_triplet(m["consistency"]["exact"]), 100),
        "Variation of P(correct), mean / median": lambda: (
            [m["variation"]["mean"], m["variation"]["median"]],
            [m["variation"]["ci_low"], m["variation"]["ci_high"]],
            1,
        ),
        "Flip rate between 1-px neighbouring shifts": lambda: (*_entry_triplet(m["flip_rate"], "mean"), 100),
        "Mean abs. change of top-1 probability": lambda: (*_entry_triplet(m["mac"], "mean"), 1),
        "Accuracy over shifts, worst / best": lambda: ([m["accuracy_map"]["min"], m["accuracy_map"]["max"]], [], 100),
    }
    if label in fixed:
        return fixed[label]()
    sampled = re.fullmatch(r"Consistency \(sampled, (\d+) pairs/image\)", label)
    if sampled:
        assert int(sampled.group(1)) == report["settings"]["pairs"]
        return (*_entry_triplet(m["consistency"]["sampled"]), 100)
    adv = re.fullmatch(r"Adversarial accuracy, max shift (\d+) px", label)
    if adv:
        i = m["adversarial"]["radius"].index(int(adv.group(1)))
        a = m["adversarial"]
        return [a["accuracy"][i]], [a["ci_low"][i], a["ci_high"][i]], 100
    raise AssertionError(f"a row the test does not know: {label!r}")


def expected_labels(report: dict[str, Any]) -> set[str]:
    """Every row the report's metrics call for (adversarial rows: at least the largest radius)."""
    m, labels = report["metrics"], set()
    if "accuracy" in m:
        labels |= {"Accuracy, no shift", "Accuracy, random shift"}
    if "exact" in m.get("consistency", {}):
        labels.add("Consistency (exact, all shifts)")
    if "sampled" in m.get("consistency", {}):
        labels.add(f"Consistency (sampled, {report['settings']['pairs']} pairs/image)")
    for key, label in (
        ("variation", "Variation of P(correct), mean / median"),
        ("flip_rate", "Flip rate between 1-px neighbouring shifts"),
        ("mac", "Mean abs. change of top-1 probability"),
        ("accuracy_map", "Accuracy over shifts, worst / best"),
    ):
        if key in m:
            labels.add(label)
    if "adversarial" in m:
        labels.add(f"Adversarial accuracy, max shift {max(m['adversarial']['radius'])} px")
    return labels


def assert_shown(text: str, values: list[float], scale: float) -> None:
    """The numbers in ``text`` are ``values`` x ``scale`` rounded to the digits shown (and nothing else)."""
    shown = NUMBER.findall(text)
    assert len(shown) == len(values), (text, values)
    for s, v in zip(shown, values):
        digits = len(s.split(".")[1]) if "." in s else 0
        assert abs(float(s) - scale * v) <= 0.5 * 10**-digits + 1e-9, f"{text!r} shows {s}, the JSON says {v!r}"
        assert digits >= (1 if scale == 100 else 4), f"{text!r}: too few digits"


def assert_rows_equal_json(rows: list[list[str]], report: dict[str, Any]) -> None:
    labels = [r[0] for r in rows]
    assert len(labels) == len(set(labels)), labels
    assert expected_labels(report) <= set(labels), expected_labels(report) - set(labels)
    for label, value, ci in rows:
        values, cis, scale = expected_numbers(label, report)
        assert_shown(value, values, scale)
        assert_shown(ci, cis, scale)


def table_rows(text: str, columns: int) -> list[list[str]]:
    """The body rows of a rich table rendered to plain text (cells split on the vertical rule)."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("\u2502")]
        if len(cells) == columns and cells[0] and cells[0] != "Metric":
            rows.append(cells)
    return rows


def render(renderable: Any) -> str:
    console = Console(width=200, record=True, force_terminal=False, color_system=None)
    console.print(renderable)
    return console.export_text()


def report_json(result: AuditResult, tmp_path: Path) -> dict[str, Any]:
    """The JSON exactly as written to disk (the source of truth people's tables come from)."""
    path = tmp_path / "r.json"
    result.save_json(path)
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------------------------------
# A real run: a position-sensitive model so that every metric takes a distinct, non-trivial value.
# ------------------------------------------------------------------------------------------------------------------

FACTORY = """
import torch
from tests.helpers import tiny_cnn

def build(num_classes=5):
    torch.manual_seed(0)
    return tiny_cnn(num_classes, spatial_head=True, size=12)
"""


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`eval` on a real checkpoint and .npz data: stdout, the JSON, the JUnit and the HTML it wrote."""
    root = tmp_path_factory.mktemp("rendering")
    (root / "rendering_models.py").write_text(FACTORY)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(root))
        import rendering_models

        model = rendering_models.build().eval()
        torch.save(model.state_dict(), root / "m.pt")
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(40, 3, 12, 12, generator=gen)
        with torch.no_grad():
            y = model(x).argmax(1)
        y[::4] = (y[::4] + 1) % 5  # some wrong at zero shift
        np.savez(root / "d.npz", images=x.numpy(), labels=y.numpy())
        args = [
            "eval",
            root / "m.pt",
            "--arch",
            "rendering_models:build",
            "--data",
            root / "d.npz",
            "--raw",
            "--max-shift",
            "3",
            "--device",
            "cpu",
            "--workers",
            "0",
            "--json",
            root / "r.json",
            "--junit",
            root / "j.xml",
            "--out",
            root / "out",
            "--min-consistency",
            "0.3",
            "--min-accuracy",
            "0.99",
            "--max-variation",
            "0.5",
            "--min-adv-accuracy",
            "1=0.02",
        ]
        res = runner.invoke(app, [str(a) for a in args])
        sys_mod = __import__("sys").modules
        sys_mod.pop("rendering_models", None)
    assert res.exit_code == 1, res.output  # --min-accuracy 0.99 fails on purpose
    return {
        "stdout": res.stdout,
        "stderr": res.stderr,
        "json": json.loads((root / "r.json").read_text()),
        "junit": root / "j.xml",
        "html": (root / "out" / "report.html").read_text(),
        "root": root,
    }


def test_real_run_metrics_are_distinct_so_a_swapped_row_shows(real_run):
    m = real_run["json"]["metrics"]
    shown = [
        m["accuracy"]["none"]["value"],
        m["accuracy"]["random"]["value"],
        m["consistency"]["exact"]["value"],
        m["consistency"]["sampled"]["value"],
    ]
    assert len(set(shown)) == len(shown), shown


def test_terminal_table_of_a_real_run_equals_its_json(real_run):
    rows = table_rows(real_run["stdout"], 3)
    assert rows, real_run["stdout"]
    assert_rows_equal_json(rows, real_run["json"])


def test_planted_table_random_shift_row_shows_zero_shift_value(real_run):
    """The "Accuracy, random shift" row shows accuracy.random, which differs from accuracy.none on this run."""
    m = real_run["json"]["metrics"]["accuracy"]
    row = next(r for r in table_rows(real_run["stdout"], 3) if r[0] == "Accuracy, random shift")
    assert float(NUMBER.findall(row[1])[0]) == pytest.approx(100 * m["random"]["value"], abs=0.05)
    assert abs(m["random"]["value"] - m["none"]["value"]) > 0.001


def test_gate_lines_on_stderr_equal_the_json_gate(real_run):
    gate = real_run["json"]["gate"]
    lines = [ln for ln in real_run["stderr"].splitlines() if ln.startswith(("ok", "FAIL"))]
    assert lines == [c["message"] for c in gate["checks"]]
    for check in gate["checks"]:
        assert_check_message(check, real_run["json"])
    assert gate["passed"] is False and [c["passed"] for c in gate["checks"]] == [True, False, True, True]


def metric_value(check: dict[str, Any], report: dict[str, Any]) -> tuple[float, float, float]:
    """The (value, ci_low, ci_high) a gate check must have read, found in the metrics by the test's own rules."""
    t, m = check["threshold"], report["metrics"]
    if t["metric"] == "consistency":
        e = m["consistency"]["exact"] if "exact" in m["consistency"] else m["consistency"]["sampled"]
        return e["value"], e["ci_low"], e["ci_high"]
    if t["metric"] == "accuracy":
        e = m["accuracy"]["none"]
        return e["value"], e["ci_low"], e["ci_high"]
    if t["metric"] == "variation":
        e = m["variation"]
        return e["mean"], e["ci_low"], e["ci_high"]
    a = m["adversarial"]
    i = a["radius"].index(t["radius"])
    return a["accuracy"][i], a["ci_low"][i], a["ci_high"][i]


CHECK_LINE = re.compile(
    r"(?P<verdict>ok  |FAIL) (?P<label>.+?) (?P<value>\d+\.\d{4})(?: \(95% CI (?P<lo>\d+\.\d{4})-(?P<hi>\d+\.\d{4})\))?"
    r" (?P<rel>>=|<=|<|>) (?P<threshold>\S+) \((?P<flag>--.+)\)"
)


def assert_check_message(check: dict[str, Any], report: dict[str, Any]) -> None:
    """The check read the right metric, and its one line shows that metric's value, interval and threshold."""
    value, lo, hi = metric_value(check, report)
    assert check["value"] == value and check["ci_low"] == lo and check["ci_high"] == hi
    line = CHECK_LINE.fullmatch(check["message"])
    assert line, check["message"]
    shown = [float(line.group(k)) for k in ("value", "lo", "hi")]
    assert shown == pytest.approx([value, lo, hi], abs=5e-5)
    t = check["threshold"]
    assert float(line.group("threshold")) == t["value"]
    relation = (">=" if check["passed"] else "<") if t["bound"] == "min" else ("<=" if check["passed"] else ">")
    assert line.group("rel") == relation and line.group("verdict") == ("ok  " if check["passed"] else "FAIL")
    label = f"adversarial accuracy at r={t['radius']}" if t["metric"] == "adversarial" else t["metric"]
    assert line.group("label") == label


def test_html_summary_and_gate_equal_the_json(real_run):
    tables = html_tables(real_run["html"])
    summary = next(t for t in tables if t and t[0] == ["Metric", "Value", "95% CI"])
    assert_rows_equal_json(summary[1:], real_run["json"])
    gate = next(t for t in tables if t and t[0] == ["Result", "Check"])
    assert gate[1:] == [["ok" if c["passed"] else "FAIL", c["message"]] for c in real_run["json"]["gate"]["checks"]]


def test_junit_testcases_equal_the_json_gate(real_run):
    report = real_run["json"]
    suite = ET.parse(real_run["junit"]).getroot().find("testsuite")
    checks = report["gate"]["checks"]
    cases = suite.findall("testcase")
    assert int(suite.get("tests")) == len(cases) == len(checks)
    assert int(suite.get("failures")) == sum(not c["passed"] for c in checks)
    for case, check in zip(cases, checks):
        failure = case.find("failure")
        assert (failure is None) == check["passed"]
        message = failure.get("message") if failure is not None else case.find("system-out").text
        assert message == check["message"]
        t = check["threshold"]
        rel = ">=" if t["bound"] == "min" else "<="
        name = f"adversarial accuracy at r={t['radius']}" if t["metric"] == "adversarial" else t["metric"]
        assert case.get("name") == f"{name} {rel} {t['value']:g}"
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["images"] == str(report["data"]["num_images"]) and props["shifts"] == str(report["settings"]["shifts"]["count"])


class _Tables(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def html_tables(page: str) -> list[list[list[str]]]:
    parser = _Tables()
    parser.feed(page)
    return parser.tables


# ------------------------------------------------------------------------------------------------------------------
# Made-up reports with every metric distinct: table, HTML, compare.
# ------------------------------------------------------------------------------------------------------------------


def test_table_and_html_of_a_made_up_report_equal_its_json(tmp_path):
    result = synthetic_result(gate=True)
    report = report_json(result, tmp_path)
    assert_rows_equal_json(table_rows(render(audit_table(result)), 3), report)
    summary = next(t for t in html_tables(render_html(result)) if t and t[0] == ["Metric", "Value", "95% CI"])
    assert_rows_equal_json(summary[1:], report)


def compare_expectations(label: str, reports: list[dict[str, Any]]) -> list[tuple[float | None, float | None, float | None]]:
    """Per run: (value, ci_low, ci_high) of a compare row, read from the JSON by the test's rules."""
    out = []
    for rep in reports:
        m = rep["metrics"]
        if label.startswith("Variation of P(correct), "):
            key = label.rsplit(", ", 1)[1]
            v = m["variation"]
            out.append((v[key], v["ci_low"], v["ci_high"]) if key == "mean" else (v[key], None, None))
        elif label.startswith("Accuracy over shifts, "):
            out.append((m["accuracy_map"]["min" if label.endswith("worst") else "max"], None, None))
        else:
            values, cis, _ = expected_numbers(label, rep)
            out.append((values[0], cis[0], cis[1]))
    return out


def test_compare_table_cells_changes_and_marks_equal_the_jsons(tmp_path):
    runs = [synthetic_result(name="base"), synthetic_result(shift=0.3, name="worse"), synthetic_result(shift=-0.02, name="close")]
    paths = []
    for i, r in enumerate(runs):
        paths.append(tmp_path / f"run{i}.json")
        r.save_json(paths[-1])
    reports = [json.loads(p.read_text()) for p in paths]
    res = runner.invoke(app, ["compare", *map(str, paths), "--names", "a,b,c", "--json", str(tmp_path / "cmp.json")])
    assert res.exit_code == 0, res.output
    rows = table_rows(res.stdout, 6)
    assert len(rows) >= 10
    marks = {True: 0, False: 0}
    for label, *cells in rows:
        expect = compare_expectations(label, reports)
        percent = "%" in cells[0]
        scale = 100 if percent else 1
        for cell, (v, _, _) in zip(cells[:3], expect):
            assert_shown(cell, [v], scale)
        for i, delta in enumerate(cells[3:], start=1):
            d = scale * (expect[i][0] - expect[0][0])
            shown = NUMBER.findall(delta)[0]
            digits = len(shown.split(".")[1]) if "." in shown else 0
            assert abs(float(shown) - d) <= 0.5 * 10**-digits + 1e-9, (label, delta, d)
            assert delta.endswith(" pt *" if percent else " *") or "*" not in delta
            lo0, hi0 = expect[0][1], expect[0][2]
            lo, hi = expect[i][1], expect[i][2]
            apart = None if None in (lo0, hi0, lo, hi) else (hi < lo0 or lo > hi0)
            assert delta.endswith("*") == bool(apart), (label, delta, expect[0], expect[i])
            if apart is not None:
                marks[bool(apart)] += 1
    assert marks[True] and marks[False]  # both kinds of change occur, so a flipped rule fails
    cmp = json.loads((tmp_path / "cmp.json").read_text())
    assert json.dumps(cmp, allow_nan=False)  # the comparison JSON is valid JSON


# ------------------------------------------------------------------------------------------------------------------
# Gate boundaries.
# ------------------------------------------------------------------------------------------------------------------


def _gate_on(value: float, metric: str, bound: str, threshold: float) -> bool:
    result = synthetic_result()
    m = result.metrics
    m["consistency"]["exact"] = replace(m["consistency"]["exact"], value=value)
    m["accuracy"]["none"] = replace(m["accuracy"]["none"], value=value)
    m["variation"] = replace(m["variation"], mean=value)
    m["adversarial"] = replace(m["adversarial"], accuracy=[*m["adversarial"].accuracy[:2], value, *m["adversarial"].accuracy[3:]])
    t = Threshold(metric, bound, threshold, 2 if metric == "adversarial" else None)
    return evaluate_gate(result, [t]).passed


@pytest.mark.parametrize("threshold", [0.95, 0.1, 1 / 3, 0.0, 1.0])
@pytest.mark.parametrize("metric", ["consistency", "accuracy", "adversarial"])
def test_planted_gate_ge_turned_into_gt(metric, threshold):
    """A minimum holds exactly at the threshold and fails one ulp below it."""
    assert _gate_on(threshold, metric, "min", threshold) is True
    if threshold > 0:
        assert _gate_on(math.nextafter(threshold, -math.inf), metric, "min", threshold) is False
    assert _gate_on(math.nextafter(threshold, math.inf), metric, "min", threshold) is True


@pytest.mark.parametrize("threshold", [0.05, 0.0, 0.3])
def test_max_variation_holds_at_the_threshold_and_fails_one_ulp_above(threshold):
    assert _gate_on(threshold, "variation", "max", threshold) is True
    assert _gate_on(math.nextafter(threshold, math.inf), "variation", "max", threshold) is False
    if threshold > 0:
        assert _gate_on(math.nextafter(threshold, -math.inf), "variation", "max", threshold) is True


def test_cli_gate_at_the_exact_value_passes_and_one_ulp_above_fails(real_run):
    """The threshold given on the command line as the report's own value (repr round-trips) passes; the next
    float above it fails with exit 1."""
    root, value = real_run["root"], real_run["json"]["metrics"]["consistency"]["exact"]["value"]
    base = [
        "eval",
        root / "m.pt",
        "--arch",
        "rendering_models:build",
        "--data",
        root / "d.npz",
        "--raw",
        "--max-shift",
        "3",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--quiet",
    ]
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(root))
        at = runner.invoke(app, [str(a) for a in [*base, "--min-consistency", repr(value)]])
        above = runner.invoke(app, [str(a) for a in [*base, "--min-consistency", repr(math.nextafter(value, 1.0))]])
        __import__("sys").modules.pop("rendering_models", None)
    assert at.exit_code == 0, at.output
    assert above.exit_code == 1, above.output


def test_build_thresholds_keeps_the_given_values_exactly():
    ts = build_thresholds(min_consistency=0.95, min_accuracy=1 / 3, max_variation=0.0, min_adv_accuracy=["4=0.8"])
    assert [(t.metric, t.bound, t.value, t.radius) for t in ts] == [
        ("consistency", "min", 0.95, None),
        ("accuracy", "min", 1 / 3, None),
        ("variation", "max", 0.0, None),
        ("adversarial", "min", 0.8, 4),
    ]


# ------------------------------------------------------------------------------------------------------------------
# The inspection and per-layer tables, and the run description.
# ------------------------------------------------------------------------------------------------------------------


def _side(hw) -> str:
    return f"{hw[0]}" if hw[0] == hw[1] else f"{hw[0]}x{hw[1]}"


def test_inspection_table_rows_equal_the_points():
    import torchvision

    from shiftaudit.antialias.inspection import inspect_model
    from shiftaudit.report.terminal import inspection_table

    insp = inspect_model(torchvision.models.resnet18(num_classes=10).eval(), (64, 64))
    table = inspection_table(insp, {"Patch": {"maxpool": "MaxBlurPool"}})
    text = render(table)
    assert f"Downsampling points at 64x64 (total stride {insp.total_stride})" in text and insp.total_stride == 32
    rows = table_rows(text, 7)
    shown = [p for p in insp.points if p.role != "squeeze"]
    assert len(rows) == len(shown) == 9
    for row, p in zip(rows, shown):
        assert row == [
            p.name,
            p.module,
            _side(p.kernel) if p.kernel else "-",
            _side(p.stride) if p.stride else "-",
            f"{_side(p.in_size)}->{_side(p.out_size)}",
            p.role,
            "MaxBlurPool" if p.name == "maxpool" else "",
        ]
    assert str(table.caption) == "k kernel, s stride, size in->out"


def test_inspection_table_counts_squeeze_pools_in_its_caption():
    import torchvision

    from shiftaudit.antialias.inspection import inspect_model
    from shiftaudit.report.terminal import inspection_table

    insp = inspect_model(torchvision.models.mobilenet_v3_small(num_classes=10).eval(), (64, 64))
    squeeze = sum(p.role == "squeeze" for p in insp.points)
    assert squeeze > 0
    assert str(inspection_table(insp).caption) == (
        f"k kernel, s stride, size in->out; + {squeeze} squeeze-excitation pools inside blocks (gating, not downsampling)"
    )


def test_layers_table_rows_equal_the_layers_json():
    """Equiv./(ref/2) is the equivariance distance over half the layer's reference distance (the heatmaps' scale)."""
    from shiftaudit.report.terminal import layers_table

    layers = {
        "layers": [
            {
                "name": "features.0",
                "resolution": [32, 32],
                "stride": 1,
                "equivariance": {"mean": 0.0},
                "invariance": {"mean": 0.3125},
                "reference_distance": 0.5,
                "exact_modulo": 1,
            },
            {
                "name": "features.3",
                "resolution": [16, 16],
                "stride": 2,
                "equivariance": {"mean": 0.04321},
                "invariance": {"mean": 0.25},
                "reference_distance": 0.4,
                "exact_modulo": 2,
            },
            {
                "name": "fc",
                "resolution": [1, 1],
                "stride": 32,
                "equivariance": {"mean": 0.125},
                "invariance": {"mean": 0.125},
                "reference_distance": None,
                "exact_modulo": None,
            },
        ]
    }
    rows = table_rows(render(layers_table(layers)), 7)
    assert rows == [
        ["features.0", "32x32", "1", "0.0000", "0.000", "0.3125", "1"],
        ["features.3", "16x16", "2", "0.0432", "0.216", "0.2500", "2"],
        ["fc", "1x1", "32", "0.1250", "-", "0.1250", "-"],
    ]


def test_run_description_names_model_data_shifts_mode_and_device():
    from shiftaudit.report.terminal import describe_run, describe_shifts

    r = synthetic_result()
    r.model["source"] = "ckpt.pt"
    r.environment["device_name"] = "cpu (2 threads)"
    assert describe_shifts(r) == "49 circular shifts within +/-3 px (wrap-around)"
    assert (
        describe_run(r)
        == "tiny (ckpt.pt) on synthetic test set; 49 circular shifts within +/-3 px (wrap-around), exhaustive; cpu (2 threads)"
    )
    r.settings["shifts"] = {"mode": "crop", "kind": "grid", "max_shift": 16, "step": 4, "count": 81}
    assert (
        describe_shifts(r)
        == "81 crop shifts within +/-16 px, step 4 (none: crops of a larger canvas, new content enters at the border)"
    )
    r.settings["shifts"] = {"mode": "circular", "kind": "all", "count": 1024}
    assert describe_shifts(r) == "all 1024 circular shifts (wrap-around)"
    r.settings["shifts"] = {"mode": "subpixel", "kind": "grid", "max_shift": 1, "step": 0.5, "count": 25, "padding": "periodic"}
    assert describe_shifts(r) == "25 sub-pixel shifts within +/-1 px, step 0.5 (periodic)"


def test_headline_radii_and_number_formats():
    from shiftaudit.report.rows import ci_text, headline_radii, num, pct

    assert headline_radii([]) == []
    assert headline_radii([0, 1, 2, 3]) == [1, 2, 3]
    assert headline_radii(list(range(17))) == [1, 2, 4, 8, 16]
    assert headline_radii(list(range(65))) == [1, 2, 4, 8, 16, 32, 64]
    assert headline_radii(list(range(34))) == [1, 2, 4, 8, 16, 32, 33]
    assert headline_radii(list(range(100))) == [1, 2, 4, 8, 16, 32, 64, 99]
    assert headline_radii([0, 4, 8, 12]) == [4, 8, 12]
    assert headline_radii([0, 0.5, 1]) == [0.5, 1]
    assert headline_radii([0, 0.25, 0.5, 3]) == [0.25, 3]  # only radii that were measured
    assert pct(None) == "-" and pct(0.12345) == "12.3 %" and pct(0.12345, 2) == "12.35 %" and pct(1.0) == "100.0 %"
    assert ci_text(None, 0.5) == "" and ci_text(0.5, None) == "" and ci_text(0.1234, 0.5678) == "[12.3, 56.8]"
    assert ci_text(0.1234, 0.5678, 2) == "[12.34, 56.78]"
    assert [num(v) for v in (None, float("nan"), float("inf"), 0.123456)] == ["-", "-", "-", "0.1235"] and num(0.5, 2) == "0.50"


def _render_at(renderable: Any, width: int) -> list[str]:
    console = Console(width=width, record=True, force_terminal=False, color_system=None)
    console.print(renderable)
    return console.export_text().splitlines()


def test_layers_table_at_80_columns_exactly():
    """Title, header, right-aligned numbers and no outer edge, as printed (the styling mutants of docs/testing.md)."""
    from shiftaudit.report.terminal import layers_table

    layers = {
        "layers": [
            {
                "name": "features.0",
                "resolution": [32, 32],
                "stride": 1,
                "equivariance": {"mean": 0.0},
                "invariance": {"mean": 0.3125},
                "reference_distance": 0.5,
                "exact_modulo": 1,
            },
            {
                "name": "a.rather.long.module.name.inside.layer4",
                "resolution": [16, 16],
                "stride": 2,
                "equivariance": {"mean": 0.04321},
                "invariance": {"mean": 0.25},
                "reference_distance": 0.4,
                "exact_modulo": 2,
            },
        ]
    }
    lines = [line.rstrip() for line in _render_at(layers_table(layers), 80)]
    assert lines[:7] == [
        "Per-layer distance from shift-equivariance",
        "Layer               ┃  Size ┃ Stride ┃ Equiv. ┃ Equiv./(ref/2) ┃ Invar. ┃ Modulo",
        "━━━━━━━━━━━━━━━━━━━━╇━━━━━━━╇━━━━━━━━╇━━━━━━━━╇━━━━━━━━━━━━━━━━╇━━━━━━━━╇━━━━━━━",
        "features.0          │ 32x32 │      1 │ 0.0000 │          0.000 │ 0.3125 │      1",
        "a.rather.long.modul │ 16x16 │      2 │ 0.0432 │          0.216 │ 0.2500 │      2",
        "e.name.inside.layer │       │        │        │                │        │",
        "4                   │       │        │        │                │        │",
    ]
    assert lines[7].startswith("Distances from shift-equivariance and -invariance: cosine")


def test_inspection_table_narrows_the_wrapping_columns_to_fit_80():
    """Long patch actions: rich narrows the name, type and action columns (widest first); short values never wrap."""
    import torchvision

    from shiftaudit.antialias.inspection import inspect_model
    from shiftaudit.report.terminal import inspection_table

    insp = inspect_model(torchvision.models.resnet18(num_classes=10).eval(), (64, 64))
    actions = {p.name: f"Conv(s2) -> Conv(s1) + BlurPool(s2) placed after {p.name}.bn" for p in insp.points}
    lines = _render_at(inspection_table(insp, {"Patch": actions}, width=80), 80)
    assert max(map(len, lines)) <= 80
    assert lines[1].rstrip() == "Layer            ┃ Type            ┃ k ┃ s ┃   Size ┃ Role     ┃ Patch"
    assert lines[3].rstrip() == "conv1            │ Conv2d          │ 7 │ 2 │ 64->32 │ stem     │ Conv(s2) ->"
