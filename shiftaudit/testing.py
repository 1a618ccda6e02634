"""Shift-robustness assertions for users' own test suites: ``assert_shift_consistency(model, data, min=0.95)``.

Each assertion is the CI gate (:mod:`shiftaudit.gating`) run from Python, with defaults made for a unit test: the
sequential gate (a verdict from a fraction of the forward passes, where the plan allows it; the full audit decides
otherwise), seed 0, the CPU. A failed gate raises :class:`AssertionError` whose message is the gate's line for each
failed check, plus ``report: PATH`` when a report was written. A setting that cannot work (a threshold out of range,
a gate the data cannot measure, an output path that is not a folder) raises the library's own
:class:`~shiftaudit.errors.ShiftAuditError` before any work, never an AssertionError: a broken test must not read as a
regressed model.

:class:`ReportingAsserts` is what the pytest fixture ``shiftaudit_report`` (:mod:`shiftaudit.pytest_plugin`) hands a
test: the same assertions, each writing its report into a folder of its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from shiftaudit.errors import OutputError, UsageError
from shiftaudit.files import all_or_nothing, check_destination, make_folder, node_kind

if TYPE_CHECKING:
    from shiftaudit.result import AuditResult

__all__ = [
    "assert_shift_robust",
    "assert_shift_consistency",
    "assert_accuracy",
    "assert_adversarial_accuracy",
    "assert_variation",
    "ReportingAsserts",
]

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
_OWN_SETTINGS = {"sequential": "exact=True (the full audit) or the default"}
_AUDIT_ARGUMENTS = {"progress", "model_info", "observers", "metrics"}  # audit()'s own keywords beside AuditConfig's


def assert_shift_robust(
    model: Any,
    data: Any,
    thresholds: Mapping[str, Any] | Iterable[Any],
    *,
    exact: bool = False,
    report: str | Path | None = None,
    html: bool | None = None,
    seed: int = 0,
    device: str = "cpu",
    **settings: Any,
) -> AuditResult:
    """Fail (AssertionError) unless ``model`` passes the gate ``thresholds`` on ``data``; return the
    :class:`~shiftaudit.result.AuditResult` when it does.

    ``model``: an ``nn.Module``, a :class:`~shiftaudit.loading.LoadedModel` or a checkpoint path. ``data``: what
    :func:`shiftaudit.audit` takes (tensors, ``(images, labels)``, a dataset, :func:`shiftaudit.load_data`'s result).
    ``thresholds``: a mapping like ``{"min_consistency": 0.95, "min_accuracy": 0.9, "max_variation": 0.05,
    "min_adv_accuracy": {2: 0.8}}``, or a list of :class:`~shiftaudit.gating.Threshold`. A value exactly at its
    threshold passes. ``exact``: run the full audit instead of the sequential gate. ``report``: a folder for
    ``report.json``, and for a full audit ``report.html`` (see :func:`write_report`); ``html=True`` runs the full
    audit so that the page exists, ``html=False`` writes the JSON only. Other ``settings`` go to
    :func:`shiftaudit.audit` (``max_shift``, ``shift_step``, ``shifts``, ``decision_error``, ...).
    """
    __tracebackhide__ = True  # pytest shows the test's line and this message, not the library's frames
    gate_thresholds = thresholds_from(thresholds)
    _check_settings(settings)
    if html and report is None:
        raise UsageError("html=True writes the HTML report into the report folder; give report=FOLDER as well.")
    folder = _check_report_folder(report) if report is not None else None
    from shiftaudit.engine.runner import audit  # local: importing shiftaudit.testing stays free of torch

    result = audit(model, data, thresholds=gate_thresholds, sequential=not (exact or html), seed=seed, device=device, **settings)
    written = write_report(result, folder, html=html) if folder is not None else []
    gate = cast("dict[str, Any]", result.gate)  # thresholds were given, so the audit judged them
    failures = [check["message"] for check in gate["checks"] if not check["passed"]]
    if failures:
        raise AssertionError(failure_message(failures, written))
    return result


def assert_shift_consistency(model: Any, data: Any, min: float = 0.95, **kwargs: Any) -> AuditResult:
    """Classification consistency (exact when every shift is evaluated, else sampled) at least ``min``."""
    __tracebackhide__ = True
    return assert_shift_robust(model, data, {"min_consistency": min}, **kwargs)


def assert_accuracy(model: Any, data: Any, min: float, **kwargs: Any) -> AuditResult:
    """Top-1 accuracy without shift at least ``min`` (labelled data)."""
    __tracebackhide__ = True
    return assert_shift_robust(model, data, {"min_accuracy": min}, **kwargs)


def assert_adversarial_accuracy(model: Any, data: Any, radius: int, min: float, **kwargs: Any) -> AuditResult:
    """Max-shift adversarial accuracy at ``radius`` (right at every shift of at most ``radius`` px) at least ``min``."""
    __tracebackhide__ = True
    return assert_shift_robust(model, data, {"min_adv_accuracy": {radius: min}}, **kwargs)


def assert_variation(model: Any, data: Any, max: float, **kwargs: Any) -> AuditResult:
    """Mean classification variation (std of P(label) over every shift) at most ``max`` (labelled data)."""
    __tracebackhide__ = True
    return assert_shift_robust(model, data, {"max_variation": max}, **kwargs)


def thresholds_from(thresholds: Mapping[str, Any] | Iterable[Any]) -> list[Any]:
    """The gate's thresholds (:func:`shiftaudit.gating.thresholds_from`); an assertion needs at least one."""
    from shiftaudit.gating import THRESHOLD_KEYS  # local: torch-free import
    from shiftaudit.gating import thresholds_from as parse

    out = parse(thresholds)
    if not out:
        raise UsageError(f"Give at least one threshold ({', '.join(THRESHOLD_KEYS)}).")
    return out


def _check_settings(settings: dict[str, Any]) -> None:
    """Refuse settings the assertion sets itself, and names :func:`shiftaudit.audit` does not know."""
    from shiftaudit.engine.config import AuditConfig  # local: torch-free import

    for name, instead in _OWN_SETTINGS.items():
        if name in settings:
            raise UsageError(f"The assertion sets {name} itself; use {instead}.")
    known = {f.name for f in dataclasses.fields(AuditConfig)} | _AUDIT_ARGUMENTS
    unknown = sorted(set(settings) - known)
    if unknown:
        raise UsageError(f"Unknown audit setting {', '.join(unknown)}; see shiftaudit.audit for the settings it takes.")


def _check_report_folder(report: str | Path) -> Path:
    """The report folder, refused before the audit when it or one of its files is something other than what a writer
    may replace (a file where the folder should be; a folder, link or FIFO where a report file should be)."""
    folder = Path(report)
    kind = node_kind(folder)
    if kind is not None and kind != "a folder":
        raise OutputError(f"Report folder {folder} is {kind}, not a folder; choose another report location.")
    if kind is None and folder.exists():
        raise OutputError(f"Report folder {folder} is a file, not a folder; choose another report location.")
    for name in (REPORT_JSON, REPORT_HTML):
        check_destination(folder / name, "Report file")
    return folder


def write_report(result: AuditResult, folder: Path, *, html: bool | None = None) -> list[Path]:
    """``report.json`` and, for a full audit, ``report.html``: the page of ``eval --out`` without its pictures, which
    would cost each test seconds of plotting. A sequential verdict holds only the gated estimates: the JSON alone, as
    with ``html=False``. All or nothing; returns the files written."""
    from shiftaudit.report.html import write_html_report  # local: torch-free import
    from shiftaudit.report.sequential import is_sequential

    with all_or_nothing():
        out = make_folder(folder)
        written = [result.save_json(out / REPORT_JSON)]
        if html is not False and not is_sequential(result):
            written.append(write_html_report(result, out / REPORT_HTML))
    return written


def failure_message(failures: list[str], written: list[Path]) -> str:
    """The gate's line for each failed check, then ``report: PATH`` (and its HTML page) when one was written."""
    lines = list(failures)
    files = {p.name: p for p in map(Path, written)}
    if REPORT_JSON in files:
        page = f" (HTML: {files[REPORT_HTML]})" if REPORT_HTML in files else ""
        lines.append(f"report: {files[REPORT_JSON]}{page}")
    return "\n".join(lines)


class ReportingAsserts:
    """The assertions of this module, each writing its report into a folder of its own under ``root``
    (``report``, ``report-2``, ...); ``written`` lists every file written, passed or failed."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.written: list[Path] = []

    def next_folder(self) -> Path:
        """The first of ``report``, ``report-2``, ``report-3``, ... under ``root`` not used yet."""
        n = 1
        while True:
            folder = self.root / ("report" if n == 1 else f"report-{n}")
            if not folder.exists():
                return folder
            n += 1

    def assert_shift_robust(
        self, model: Any, data: Any, thresholds: Mapping[str, Any] | Iterable[Any], **kwargs: Any
    ) -> AuditResult:
        """:func:`assert_shift_robust`, writing the report under ``root``."""
        __tracebackhide__ = True
        if "report" in kwargs:
            raise UsageError("The shiftaudit_report fixture chooses the report folder itself; leave out report=.")
        folder = self.next_folder()
        try:
            return assert_shift_robust(model, data, thresholds, report=folder, **kwargs)
        finally:
            self.written += sorted(p for p in folder.glob("*") if p.is_file()) if folder.is_dir() else []

    def assert_shift_consistency(self, model: Any, data: Any, min: float = 0.95, **kwargs: Any) -> AuditResult:
        __tracebackhide__ = True
        return self.assert_shift_robust(model, data, {"min_consistency": min}, **kwargs)

    def assert_accuracy(self, model: Any, data: Any, min: float, **kwargs: Any) -> AuditResult:
        __tracebackhide__ = True
        return self.assert_shift_robust(model, data, {"min_accuracy": min}, **kwargs)

    def assert_adversarial_accuracy(self, model: Any, data: Any, radius: int, min: float, **kwargs: Any) -> AuditResult:
        __tracebackhide__ = True
        return self.assert_shift_robust(model, data, {"min_adv_accuracy": {radius: min}}, **kwargs)

    def assert_variation(self, model: Any, data: Any, max: float, **kwargs: Any) -> AuditResult:
        __tracebackhide__ = True
        return self.assert_shift_robust(model, data, {"max_variation": max}, **kwargs)
