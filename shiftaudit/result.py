"""The outcome of an audit: metrics, per-image values and the run's settings, with a versioned JSON form.

The JSON holds only what the run determines (no timestamps, no durations), so the same seed, data and device give
byte-identical reports: reports can be diffed, cached and compared across runs and processes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shiftaudit.atomicio import write_json_atomic

SCHEMA = "shiftaudit/audit-report"
SCHEMA_VERSION = 1


def _clean(obj: Any) -> Any:
    """JSON has no NaN/inf: store them as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


@dataclass
class AuditResult:
    """Everything an audit measured. ``metrics`` follows the JSON schema; helpers below give the headline numbers."""

    metrics: dict[str, Any]
    per_image: dict[str, list[Any]]
    model: dict[str, Any]
    data: dict[str, Any]
    settings: dict[str, Any]
    environment: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    gate: dict[str, Any] | None = None
    timing: dict[str, float] = field(default_factory=dict)  # wall time, images/s: shown, never written to JSON

    # -- headline numbers ---------------------------------------------------------------------------------------
    def _get(self, *path: str) -> Any:
        node: Any = self.metrics
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return node

    @property
    def labelled(self) -> bool:
        return bool(self.data.get("labelled"))

    @property
    def accuracy(self) -> float | None:
        return self._get("accuracy", "none", "value")

    @property
    def accuracy_random(self) -> float | None:
        return self._get("accuracy", "random", "value")

    @property
    def consistency(self) -> float | None:
        """Exact consistency when every shift was evaluated, else the sampled estimate."""
        exact = self._get("consistency", "exact", "value")
        return exact if exact is not None else self._get("consistency", "sampled", "value")

    @property
    def consistency_sampled(self) -> float | None:
        return self._get("consistency", "sampled", "value")

    @property
    def consistency_exact(self) -> float | None:
        return self._get("consistency", "exact", "value")

    @property
    def variation(self) -> float | None:
        return self._get("variation", "mean")

    @property
    def adversarial_curve(self) -> dict[int, float]:
        adv = self._get("adversarial")
        if not adv:
            return {}
        return {(int(r) if float(r).is_integer() else float(r)): float(a) for r, a in zip(adv["radius"], adv["accuracy"])}

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
        return _clean(report)

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
