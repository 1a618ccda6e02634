"""The outcome of an audit: metrics, per-image values and the run's settings, with a versioned JSON form.

The JSON holds only what the run determines (no timestamps, no durations), so the same seed, data and device give
byte-identical reports: reports can be diffed, cached and compared across runs and processes.

Each metric entry is its metric's ``entry_type`` (:mod:`shiftaudit.metrics.entries`); the JSON is written from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from shiftaudit.atomicio import write_json_atomic
from shiftaudit.metrics.entries import Curve, Entry, Proportion, Summary, to_json
from shiftaudit.metrics.layout import read_metrics

SCHEMA = "shiftaudit/audit-report"
SCHEMA_VERSION = 1

E = TypeVar("E", bound=Entry)


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
    def from_json(cls, report: dict[str, Any]) -> AuditResult:
        from shiftaudit.errors import UsageError

        if report.get("schema") != SCHEMA:
            raise UsageError("This JSON file is not a shiftaudit audit report.")
        if int(report.get("schema_version", 0)) > SCHEMA_VERSION:
            raise UsageError(
                f"This report uses schema version {report.get('schema_version')}, newer than this shiftaudit "
                f"understands ({SCHEMA_VERSION}); upgrade shiftaudit."
            )
        return cls(
            metrics=report.get("metrics", {}),
            per_image=report.get("per_image", {}),
            model=report.get("model", {}),
            data=report.get("data", {}),
            settings=report.get("settings", {}),
            environment=report.get("environment", {}),
            notes=list(report.get("notes", [])),
            gate=report.get("gate"),
        )
