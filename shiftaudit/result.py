"""The outcome of an audit, and the versioned JSON report it is written as and read back from.

The JSON holds only what the run determines (no timestamps, no durations), so the same seed, data and device give
byte-identical reports: reports can be diffed, cached and compared across runs and processes. The one exception is an
audit that asked for an inference runtime (``settings.backend``): it records how long the export took, and its floats
depend on the runtime's kernels (docs/performance.md).

Typed values travel and the JSON is their serialisation: each metric entry is its metric's ``entry_type``
(:mod:`shiftaudit.metrics.entries`), written by ``to_json`` and read back by :meth:`AuditResult.from_json` through the
metric registry (:func:`~shiftaudit.metrics.layout.read_metrics`). ``data`` and ``settings`` stay JSON objects (shift
modes and the engine add keys to them); the fields readers use are declared below and read by the same types. A report
that is not ours, newer, or has a missing, empty, unknown or mistyped field is refused in one sentence naming the path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from shiftaudit.files import write_json_atomic
from shiftaudit.metrics.entries import Curve, Entry, Proportion, ReportError, Summary, join, omitted, to_json
from shiftaudit.metrics.layout import read_metrics, read_per_image

SCHEMA = "shiftaudit/audit-report"
SCHEMA_VERSION = 1

E = TypeVar("E", bound=Entry)


def _pair(entry: Entry, path: str) -> str | None:
    return None if len(entry["image_size"]) == 2 else f"{join(path, 'image_size')} is not a (height, width) pair"


@dataclass(frozen=True, eq=False)
class DataInfo(Entry):
    """The fields of ``data`` that readers use (the sequential gate adds ``images_drawn``)."""

    open = True
    description: str
    kind: str
    num_images: int
    labelled: bool
    image_size: list[int]
    nonfinite_images: int
    preprocessing: dict[str, Any] | None = omitted()
    problem = _pair


@dataclass(frozen=True, eq=False)
class ShiftsInfo(Entry):
    """``settings.shifts``: the shift set (:meth:`~shiftaudit.shifts.sets.ShiftSet.to_json`)."""

    open = True
    mode: str
    kind: str
    image_size: list[int]
    max_shift: int
    step: float
    count: int
    padding: str
    problem = _pair


@dataclass(frozen=True, eq=False)
class Probe(Entry):
    """``settings.backend.probe``: the same images through torch and through the runtime before the audit."""

    rows: int
    max_abs_logit_diff: float
    top1_agreement: float
    tolerance: float  # the largest logit difference accepted, relative to 1 + the largest |logit|


@dataclass(frozen=True, eq=False)
class Backend(Entry):
    """``settings.backend``: who ran the forward passes when an inference runtime was asked for (``backend`` other
    than torch; absent otherwise, so a torch audit's report is what it always was). ``name``: torch or the runtime
    that ran them; ``asked``: what was asked; ``export_seconds``: exporting and compiling the model, when it was."""

    name: str
    asked: str
    export_seconds: float | None
    probe: Probe | None


@dataclass(frozen=True, eq=False)
class Settings(Entry):
    """The fields of ``settings`` that readers use (the sequential gate adds ``sequential``, an audit that asked for an
    inference runtime ``backend``)."""

    open = True
    shifts: ShiftsInfo
    shift_mode: str
    mode: str
    pairs: int
    seed: int
    precision: str
    device_batch: int
    engine: str
    backend: Backend | None = omitted()


@dataclass(frozen=True, eq=False)
class TopLevel(Entry):
    """The report's top level, in the order written (``gate`` only when thresholds were given)."""

    schema: str
    schema_version: int
    model: dict[str, Any]
    data: DataInfo
    settings: Settings
    environment: dict[str, Any]
    metrics: Any  # read_metrics
    per_image: Any  # read_per_image
    notes: list[str]
    gate: dict[str, Any] | None = omitted()


@dataclass
class AuditResult:
    """Everything an audit measured. ``metrics`` holds each metric's typed entry under its report key (groups such as
    ``accuracy`` are dicts of entries); helpers below give the headline numbers."""

    metrics: dict[str, Any]
    per_image: dict[str, list[Any]]
    model: dict[str, Any]
    data: dict[str, Any]
    settings: dict[str, Any]
    environment: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    gate: dict[str, Any] | None = None
    timing: dict[str, float] = field(default_factory=dict)  # wall time, images/s: shown, never written to JSON

    def __post_init__(self) -> None:
        self.metrics = read_metrics(self.metrics)  # entries given as dicts become their metric's type

    # -- headline numbers ---------------------------------------------------------------------------------------
    def entry(self, *key: str) -> Any:
        """The metric entry at a report key (``result.entry("accuracy", "none")``), or None where there is none."""
        node: Any = self.metrics
        for part in key:
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    def _typed(self, kind: type[E], *key: str) -> E | None:
        found = self.entry(*key)
        return found if isinstance(found, kind) else None

    def _value(self, *key: str) -> float | None:
        found = self._typed(Proportion, *key)
        return None if found is None else found.value

    @property
    def labelled(self) -> bool:
        return bool(self.data.get("labelled"))

    @property
    def accuracy(self) -> float | None:
        return self._value("accuracy", "none")

    @property
    def accuracy_random(self) -> float | None:
        return self._value("accuracy", "random")

    @property
    def consistency(self) -> float | None:
        """Exact consistency when every shift was evaluated, else the sampled estimate."""
        exact = self.consistency_exact
        return exact if exact is not None else self.consistency_sampled

    @property
    def consistency_sampled(self) -> float | None:
        return self._value("consistency", "sampled")

    @property
    def consistency_exact(self) -> float | None:
        return self._value("consistency", "exact")

    @property
    def variation(self) -> float | None:
        found = self._typed(Summary, "variation")
        return None if found is None else found.mean

    @property
    def adversarial_curve(self) -> dict[int | float, float]:
        curve = self._typed(Curve, "adversarial")
        if curve is None:
            return {}
        return {(int(r) if float(r).is_integer() else float(r)): float(a) for r, a in zip(curve.radius, curve.accuracy)}

    def adversarial_accuracy(self, radius: int | float) -> float | None:
        """Accuracy when the adversary may shift by up to ``radius`` px; None when the run evaluated no shift of that
        radius (a smaller radius's value would claim a test that never ran)."""
        return self.adversarial_curve.get(radius)

    # -- serialisation ------------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        report = {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "data": self.data,
            "settings": self.settings,
            "environment": self.environment,
            "metrics": self.metrics,
            "per_image": self.per_image,
            "notes": self.notes,
        }
        if self.gate is not None:
            report["gate"] = self.gate
        return to_json(report)

    def save_json(self, path: str | Path) -> Path:
        return write_json_atomic(path, self.to_json())

    @classmethod
    def from_json(cls, report: Any, name: str = "The report", hint: str | None = None) -> AuditResult:
        """Read an audit report's JSON strictly; a :class:`~shiftaudit.metrics.entries.ReportError` (exit 2) names
        ``name`` and, for a report that is not one, ends with ``hint`` (what the reader reads instead)."""
        end = f"; {hint}." if hint else "."
        if not isinstance(report, dict) or report.get("schema") != SCHEMA:
            raise ReportError(f"{name} is not a shiftaudit audit report{end}")
        version = report.get("schema_version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ReportError(f"{name} is not a shiftaudit audit report (its schema_version is {short(version)}){end}")
        if version > SCHEMA_VERSION:
            raise ReportError(
                f"{name} uses report schema version {version}, newer than this shiftaudit reads ({SCHEMA_VERSION}); "
                "upgrade shiftaudit."
            )
        try:
            return cls._read(report)
        except ReportError as exc:
            raise ReportError(f"{name} is not a well-formed shiftaudit audit report ({exc}){end}") from None

    @classmethod
    def _read(cls, report: dict[str, Any]) -> AuditResult:
        TopLevel.from_json(report, "")
        return cls(
            metrics=read_metrics(report["metrics"]),
            per_image=read_per_image(report["per_image"]),
            model=report["model"],
            data=report["data"],
            settings=report["settings"],
            environment=report["environment"],
            notes=report["notes"],
            gate=report.get("gate"),
        )


def short(value: object) -> str:
    """A value from a file, for a message: its repr, cut to 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
