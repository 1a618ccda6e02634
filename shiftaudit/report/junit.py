"""The CI gate as JUnit XML, the test-report format GitHub, GitLab and Jenkins render without plugins.

One ``<testsuite name="shiftaudit gate">`` (inside a ``<testsuites>`` root, which every reader accepts) holds one
``<testcase>`` per threshold; a failed threshold carries a ``<failure>`` whose message is the gate's check line, so
the CI page shows value, threshold and confidence interval without opening the logs. A result without a gate gives a
well-formed suite with zero test cases (the CLI refuses ``--junit`` without a threshold, so that never hides a
misconfigured pipeline). Every string from the run (paths, names, messages) is written through
:func:`~shiftaudit.errors.one_line`: XML 1.0 forbids most control characters even as references (``&#x1b;``), and a
file that does not parse would fail the CI step or vanish from its page.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from shiftaudit.errors import one_line
from shiftaudit.files import write_bytes_atomic
from shiftaudit.gating import GateReport
from shiftaudit.result import AuditResult

SUITE_NAME = "shiftaudit gate"
CLASSNAME = "shiftaudit.gating"


def _checks(source: AuditResult | GateReport | dict[str, Any] | None) -> tuple[list[dict[str, Any]], AuditResult | None]:
    if isinstance(source, AuditResult):
        return list((source.gate or {}).get("checks", [])), source
    if isinstance(source, GateReport):
        return source.to_json()["checks"], None
    if isinstance(source, dict):
        return list(source.get("checks", [])), None
    if source is None:
        return [], None
    raise TypeError(f"write_junit needs an AuditResult, a GateReport or a gate dict, got {type(source).__name__}")


def _case_name(check: dict[str, Any]) -> str:
    t = check.get("threshold", {})
    label = f"adversarial accuracy at r={t.get('radius')}" if t.get("metric") == "adversarial" else str(t.get("metric", "check"))
    rel = ">=" if t.get("bound") == "min" else "<="
    return one_line(f"{label} {rel} {t.get('value', 0):g}")


def build_junit(source: AuditResult | GateReport | dict[str, Any] | None) -> ET.Element:
    """The XML tree (``<testsuites>`` root) for a result with a gate, a :class:`GateReport` or a gate dict."""
    checks, result = _checks(source)
    failures = sum(1 for c in checks if not c.get("passed"))
    seconds = float(result.timing.get("seconds", 0.0)) if result is not None and result.timing else 0.0
    counts = {"tests": str(len(checks)), "failures": str(failures), "errors": "0", "skipped": "0", "time": f"{seconds:.3f}"}
    root = ET.Element("testsuites", {"name": "shiftaudit", **counts})
    suite = ET.SubElement(root, "testsuite", {"name": SUITE_NAME, **counts})
    if result is not None:
        props = ET.SubElement(suite, "properties")
        model = result.model.get("arch") or result.model.get("description") or "model"
        for name, value in (
            ("model", model),
            ("checkpoint", result.model.get("source")),
            ("data", result.data.get("description")),
            ("images", result.data.get("num_images")),
            ("shifts", result.settings.get("shifts", {}).get("count")),
            ("mode", result.settings.get("mode")),
            ("seed", result.settings.get("seed")),
            ("shiftaudit", result.environment.get("shiftaudit")),
        ):
            if value is not None:
                ET.SubElement(props, "property", {"name": name, "value": one_line(str(value))})
    for check in checks:
        case = ET.SubElement(suite, "testcase", {"name": _case_name(check), "classname": CLASSNAME, "time": "0"})
        message = one_line(str(check.get("message", "")))
        if not check.get("passed"):
            failure = ET.SubElement(case, "failure", {"message": message, "type": "ThresholdNotMet"})
            failure.text = f"{message}\nestimator: {one_line(str(check.get('estimator', '')))}"
        else:
            ET.SubElement(case, "system-out").text = message
    return root


def write_junit(source: AuditResult | GateReport | dict[str, Any] | None, path: str | Path) -> Path:
    """Write the JUnit XML atomically (UTF-8, with an XML declaration); returns the path."""
    root = build_junit(source)
    ET.indent(root)
    data = ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"
    return write_bytes_atomic(path, data)
