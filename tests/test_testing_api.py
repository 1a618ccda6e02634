"""shiftaudit.testing (the gate as a test assertion) and its pytest fixture, including the sample test file of
docs/ci.md run with pytest exactly as written."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from shiftaudit.engine.runner import audit
from shiftaudit.errors import OutputError, ShiftAuditError, UsageError
from shiftaudit.gating import Threshold
from shiftaudit.shifts.sets import ShiftSet
from shiftaudit.testing import (
    ReportingAsserts,
    assert_accuracy,
    assert_adversarial_accuracy,
    assert_shift_consistency,
    assert_shift_robust,
    assert_variation,
)
from tests.helpers import StopAfter, tiny_cnn

ROOT = Path(__file__).resolve().parent.parent
SMALL = ShiftSet.window((16, 16), 2)  # 25 shifts


def _labelled(n: int, seed: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A zero-padded net (no polyphase engine) and labels it gets right two times in three."""
    torch.manual_seed(seed)
    model = tiny_cnn(num_classes=4, size=16).eval()
    x = torch.randn(n, 3, 16, 16)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::3] = (y[::3] + 1) % 4
    return model, x, y


@pytest.fixture(scope="module")
def small():
    """12 images x 25 shifts = 300 forward passes: too few for the sequential gate, so the full audit decides."""
    model, x, y = _labelled(12, seed=3)
    return model, (x, y), audit(model, (x, y), shifts=SMALL, device="cpu")


@pytest.fixture(scope="module")
def large():
    """64 images x 25 shifts = 1,600 forward passes: enough for the sequential gate."""
    model, x, y = _labelled(64, seed=3)
    return model, (x, y), audit(model, (x, y), shifts=SMALL, device="cpu")


# -- the verdict -----------------------------------------------------------------------------------------------------


def test_exactly_at_the_threshold_passes_and_one_ulp_beyond_fails(small):
    model, data, full = small
    values = {
        "consistency": full.metrics["consistency"]["exact"]["value"],
        "accuracy": full.accuracy,
        "adversarial": full.adversarial_accuracy(2),
        "variation": full.metrics["variation"]["mean"],
    }
    assert round(values["consistency"], 4) == 0.9573
    assert (values["accuracy"], values["adversarial"]) == (8 / 12, 5 / 12)
    at = {
        "consistency": lambda v: assert_shift_consistency(model, data, min=v, shifts=SMALL),
        "accuracy": lambda v: assert_accuracy(model, data, min=v, shifts=SMALL),
        "adversarial": lambda v: assert_adversarial_accuracy(model, data, 2, min=v, shifts=SMALL),
        "variation": lambda v: assert_variation(model, data, max=v, shifts=SMALL),
    }
    for metric, check in at.items():
        value = values[metric]
        result = check(value)
        assert result.gate["passed"] and result.settings["engine"] != "sequential"
        assert "sequential gate not used (the full audit needs only 300 forward passes); the full audit decides" in result.notes
        beyond = np.nextafter(value, -1.0) if metric == "variation" else np.nextafter(value, 2.0)
        label = "adversarial accuracy at r=2" if metric == "adversarial" else metric
        with pytest.raises(AssertionError, match=f"^FAIL {label} "):
            check(float(beyond))


def test_the_failure_message_is_the_gate_line_then_the_report_path(small, tmp_path):
    model, data, full = small
    folder = tmp_path / "report"
    with pytest.raises(AssertionError) as failed:
        assert_shift_robust(model, data, {"min_consistency": 0.999, "min_accuracy": 0.5}, shifts=SMALL, report=folder)
    assert str(failed.value) == (
        "FAIL consistency 0.9573 (95% CI 0.6974-0.9954) < 0.999 (--min-consistency 0.999)\n"
        f"report: {folder / 'report.json'} (HTML: {folder / 'report.html'})"
    )
    report = json.loads((folder / "report.json").read_text())
    assert report["metrics"] == json.loads(json.dumps(full.to_json()["metrics"]))  # the full audit, as run without a gate
    failed_check = [c for c in report["gate"]["checks"] if not c["passed"]]
    assert [c["message"] for c in failed_check] == [str(failed.value).splitlines()[0]]
    assert "Gate FAILED: 1 of 2 checks" in (folder / "report.html").read_text()
    assert sorted(p.name for p in folder.iterdir()) == ["report.html", "report.json"]


def test_without_a_report_the_message_is_the_gate_lines_alone(small):
    model, data, _ = small
    with pytest.raises(AssertionError) as failed:
        assert_shift_robust(model, data, {"min_consistency": 0.999, "min_accuracy": 0.9}, shifts=SMALL)
    assert str(failed.value) == (
        "FAIL consistency 0.9573 (95% CI 0.6974-0.9954) < 0.999 (--min-consistency 0.999)\n"
        "FAIL accuracy 0.6667 (95% CI 0.3906-0.8619) < 0.9 (--min-accuracy 0.9)"
    )


def test_the_sequential_gate_decides_by_default_when_the_data_is_large_enough(large, tmp_path):
    model, data, full = large
    exact = full.metrics["consistency"]["exact"]["value"]
    assert round(exact, 4) == 0.9783
    passed = assert_shift_consistency(model, data, min=0.8, shifts=SMALL, report=tmp_path / "pass")
    seq = passed.metrics["sequential"]
    assert passed.settings["engine"] == "sequential" and seq["forward_rows"] < seq["forward_rows_exhaustive"] == 1600
    assert sorted(p.name for p in (tmp_path / "pass").iterdir()) == ["report.json"]  # nothing else to show
    with pytest.raises(AssertionError) as failed:  # 2 points below: 896 of the 1,600 passes, over the default half
        assert_shift_consistency(model, data, min=0.999, shifts=SMALL, report=tmp_path / "fail", sequential_budget=0.75)
    report = json.loads((tmp_path / "fail" / "report.json").read_text())
    assert report["settings"]["engine"] == "sequential"
    check = report["gate"]["checks"][0]
    stat = report["metrics"]["sequential"]["statistics"][0]
    assert (check["value"], check["ci_low"], check["ci_high"], check["draws"]) == (
        stat["estimate"],
        stat["ci_low"],
        stat["ci_high"],
        stat["draws"],
    )
    assert str(failed.value) == (
        f"FAIL consistency {stat['estimate']:.4f} (99 % confidence sequence {stat['ci_low']:.4f}-{stat['ci_high']:.4f}, "
        f"{stat['draws']} draws) < 0.999 (--min-consistency 0.999)\nreport: {tmp_path / 'fail' / 'report.json'}"
    )
    assert stat["ci_low"] <= exact <= stat["ci_high"] < 0.999


def test_exact_and_html_run_the_full_audit(large, tmp_path):
    model, data, full = large
    exact = assert_shift_consistency(model, data, min=0.8, shifts=SMALL, exact=True)
    assert exact.settings["engine"] == "dense" and exact.metrics == full.metrics
    page = assert_shift_consistency(model, data, min=0.8, shifts=SMALL, report=tmp_path / "page", html=True)
    assert page.settings["engine"] == "dense"
    assert sorted(p.name for p in (tmp_path / "page").iterdir()) == ["report.html", "report.json"]
    plain = assert_shift_consistency(model, data, min=0.8, shifts=SMALL, report=tmp_path / "plain", html=False, exact=True)
    assert plain.settings["engine"] == "dense"
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == ["report.json"]


def test_a_list_of_thresholds_is_the_gate_own_form(small):
    model, data, full = small
    result = assert_shift_robust(model, data, [Threshold("consistency", "min", 0.9)], shifts=SMALL)
    assert result.gate["checks"][0]["value"] == full.metrics["consistency"]["exact"]["value"]


# -- refused before any work ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("thresholds", "settings", "error", "message"),
    [
        ({"min_consistency": 1.5}, {}, UsageError, "min_consistency takes a fraction between 0 and 1 (e.g. 0.95), got 1.5."),
        ({"min_consistency": "0.9"}, {}, UsageError, "min_consistency takes a number, got '0.9'."),
        ({"min_accuracy": float("nan")}, {}, UsageError, "min_accuracy takes a number, got nan."),
        ({"min_accuracy": True}, {}, UsageError, "min_accuracy takes a number, got True."),
        ({"max_variation": -0.1}, {}, UsageError, "max_variation must be >= 0, got -0.1."),
        ({"min_adv_accuracy": {1.5: 0.5}}, {}, UsageError, "min_adv_accuracy takes whole radii >= 0 in px as keys, got 1.5."),
        (
            {"min_adv_accuracy": {1: 2}},
            {},
            UsageError,
            "min_adv_accuracy[1] takes a fraction between 0 and 1 (e.g. 0.95), got 2.",
        ),
        (
            {"min_adv_accuracy": [0.5]},
            {},
            UsageError,
            "min_adv_accuracy takes a mapping radius -> fraction such as {2: 0.8}, got [0.5].",
        ),
        (
            {"min_consistence": 0.9},
            {},
            UsageError,
            "Unknown thresholds min_consistence; use min_consistency, min_accuracy, max_variation, min_adv_accuracy.",
        ),
        ({}, {}, UsageError, "Give at least one threshold (min_consistency, min_accuracy, max_variation, min_adv_accuracy)."),
        ("0.95", {}, UsageError, "thresholds takes a mapping such as {'min_consistency': 0.95} or a list of Threshold, got str."),
        ([0.95], {}, UsageError, "thresholds lists shiftaudit.Threshold values, got a float."),
        (
            {"min_consistency": 0.9},
            {"sequential": True},
            UsageError,
            "The assertion sets sequential itself; use exact=True (the full audit) or the default.",
        ),
        (
            {"min_consistency": 0.9},
            {"max_shfit": 2},
            UsageError,
            "Unknown audit setting max_shfit; see shiftaudit.audit for the settings it takes.",
        ),
        (
            {"min_consistency": 0.9},
            {"html": True},
            UsageError,
            "html=True writes the HTML report into the report folder; give report=FOLDER as well.",
        ),
        (
            {"min_adv_accuracy": {3: 0.5}},
            {},
            UsageError,
            "--min-adv-accuracy 3=0.5 asks for radius 3 but the shift set only reaches 2; raise --max-shift.",
        ),
        (
            {"min_consistency": 0.9},
            {"decision_error": 0.9},
            UsageError,
            "`decision_error` takes a probability in (0, 0.5], e.g. 0.01; got 0.9.",
        ),
    ],
)
def test_bad_thresholds_and_settings_raise_the_library_errors_before_any_work(
    small, tmp_path, thresholds, settings, error, message
):
    model, data, _ = small
    counted = StopAfter(model, None)
    with pytest.raises(error) as refused:
        assert_shift_robust(counted, data, thresholds, shifts=SMALL, **settings)
    assert str(refused.value) == message
    assert not isinstance(refused.value, AssertionError) and counted.calls == 0


def test_a_gate_the_data_cannot_measure_is_a_usage_error_not_a_failure(small):
    model, (x, _), _ = small
    with pytest.raises(UsageError, match=r"^--min-accuracy 0.5 needs labelled data, but the data has no labels\.$"):
        assert_accuracy(model, x, min=0.5, shifts=SMALL)


@pytest.mark.parametrize("plant", ["file", "folder", "fifo", "symlink"])
def test_a_report_location_that_cannot_be_written_is_refused_before_the_audit(small, tmp_path, plant):
    model, data, _ = small
    folder = tmp_path / "out"
    if plant == "file":
        folder.write_text("not a folder")
        expected = f"Report folder {folder} is a file, not a folder; choose another report location."
    else:
        folder.mkdir()
        target = folder / "report.json"
        if plant == "folder":
            target.mkdir()
            expected = f"Report file {target} is a folder; pass a file path, not a folder."
        elif plant == "fifo":
            os.mkfifo(target)
            expected = (
                f"Report file {target} is a FIFO (named pipe), not a regular file; shiftaudit only replaces "
                "regular files, so choose another output path."
            )
        else:
            (tmp_path / "elsewhere.json").write_text("{}")
            target.symlink_to(tmp_path / "elsewhere.json")
            expected = (
                f"Report file {target} is a symbolic link, not a regular file; shiftaudit only replaces "
                "regular files, so choose another output path."
            )
    counted = StopAfter(model, None)
    with pytest.raises(OutputError) as refused:
        assert_shift_consistency(counted, data, min=0.5, shifts=SMALL, report=folder)
    assert str(refused.value) == expected and counted.calls == 0
    assert (tmp_path / "elsewhere.json").read_text() == "{}" if plant == "symlink" else True


def test_the_fixture_object_gives_each_assertion_a_folder_of_its_own(small, tmp_path):
    model, data, _ = small
    asserts = ReportingAsserts(tmp_path / "shiftaudit")
    asserts.assert_shift_consistency(model, data, min=0.5, shifts=SMALL)
    with pytest.raises(AssertionError, match="report: .*/shiftaudit/report-2/report.json"):
        asserts.assert_accuracy(model, data, min=0.9, shifts=SMALL)
    assert [p.relative_to(tmp_path).as_posix() for p in asserts.written] == [
        "shiftaudit/report/report.html",
        "shiftaudit/report/report.json",
        "shiftaudit/report-2/report.html",
        "shiftaudit/report-2/report.json",
    ]
    with pytest.raises(UsageError, match="chooses the report folder itself"):
        asserts.assert_variation(model, data, max=0.5, shifts=SMALL, report=tmp_path / "mine")


# -- the plugin and the sample of docs/ci.md --------------------------------------------------------------------------


def _clean_env() -> dict[str, str]:
    """The environment for a pytest run of its own: none of this run's pytest or xdist settings, one torch thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_the_plugin_is_registered_and_imports_nothing_heavy():
    from importlib.metadata import entry_points

    assert [e.value for e in entry_points(group="pytest11") if e.name == "shiftaudit"] == ["shiftaudit.pytest_plugin"]
    code = "import sys, shiftaudit.pytest_plugin; print(sorted(m for m in ('torch', 'numpy', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_clean_env(), timeout=120)
    assert (out.returncode, out.stdout.strip()) == (0, "[]"), out.stderr


def docs_sample() -> str:
    """The first python block under "## From your own test suite" in docs/ci.md."""
    text = (ROOT / "docs" / "ci.md").read_text(encoding="utf-8")
    section = text.split("\n## From your own test suite\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"^```python\n(.*?)^```$", section, re.S | re.M)
    assert match is not None, "docs/ci.md: no python block in 'From your own test suite'"
    return match.group(1)


@pytest.mark.slow  # a pytest of its own: torch imported again, four audits (about 10 s on an idle 2-core machine)
def test_the_sample_test_file_of_the_docs_runs_as_written_and_a_failing_variant_names_its_report(tmp_path):
    sample = docs_sample()
    assert sample.count("min=0.9, max_shift=4") == 1
    (tmp_path / "test_shift_robustness.py").write_text(sample)
    (tmp_path / "test_raised.py").write_text(sample.replace("min=0.9, max_shift=4", "min=0.999, max_shift=4"))
    base = tmp_path / "base"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rA",
            "-p",
            "no:cacheprovider",
            f"--basetemp={base}",
            "test_shift_robustness.py",
            "test_raised.py::test_shift_consistency",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=300,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert "PASSED test_shift_robustness.py::test_shift_consistency" in text
    assert "PASSED test_shift_robustness.py::test_accuracy_holds_under_small_shifts" in text
    assert "FAILED test_raised.py::test_shift_consistency" in text
    assert "1 failed, 2 passed" in text
    line = re.search(r"^E +AssertionError: (FAIL consistency .*)$", text, re.M)
    path = re.search(r"^E +report: (\S+)$", text, re.M)
    assert line is not None and path is not None, text
    report_path = Path(path.group(1))
    assert report_path.is_file() and base in report_path.parents
    section = text.split(" shiftaudit report ", 1)[1]
    assert section.split("\n", 2)[1] == str(report_path)  # the fixture's failure section names the same file
    report = json.loads(report_path.read_text())
    assert report["settings"]["engine"] == "sequential"
    (check,) = report["gate"]["checks"]
    (stat,) = report["metrics"]["sequential"]["statistics"]
    assert (
        check["message"]
        == line.group(1)
        == (
            f"FAIL consistency {stat['estimate']:.4f} (99 % confidence sequence {stat['ci_low']:.4f}-{stat['ci_high']:.4f}, "
            f"{stat['draws']} draws) < 0.999 (--min-consistency 0.999)"
        )
    )
    assert stat["decision"] == "fail" and stat["ci_high"] < 0.999


def test_a_shift_audit_error_is_not_an_assertion_error():
    """The contract the refusals above rely on: pytest.raises(AssertionError) never catches a refused setting."""
    assert not issubclass(ShiftAuditError, AssertionError)
