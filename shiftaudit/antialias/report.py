"""A patch and what it changed, as one typed report: the document ``shiftaudit patch --json`` writes, built by the
library so that a Python user gets the same before/after comparison as the command line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from shiftaudit.antialias.calibrate import Recalibration
from shiftaudit.antialias.costs import LatencyStats, compare_latency_stats, latency_too_noisy
from shiftaudit.antialias.distill import DistillResult
from shiftaudit.antialias.rewrite import PatchResult
from shiftaudit.result import AuditResult

SCHEMA = "shiftaudit/patch-report"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class PatchLatency:
    """Forward latency of the original and the patched model, measured in alternation on one input shape."""

    baseline: LatencyStats
    patched: LatencyStats
    input_shape: tuple[int, ...]
    device: str

    @property
    def overhead(self) -> float:
        """The patched model's extra time as a fraction of the original's (0.1: 10 % slower), from the medians."""
        return self.patched.median / self.baseline.median - 1

    @property
    def too_noisy(self) -> bool:
        """Whether the spread hides the difference (:func:`~shiftaudit.antialias.latency_too_noisy`)."""
        return latency_too_noisy(self.baseline, self.patched)

    def to_json(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline.median,
            "patched": self.patched.median,
            "input_shape": list(self.input_shape),
            "device": self.device,
            "repeats": self.baseline.repeats,
            "spread": {"baseline": self.baseline.to_json(), "patched": self.patched.to_json()},
            "noise_exceeds_difference": self.too_noisy,
        }


@dataclass(frozen=True)
class PatchComparison:
    """The audits of the original and the patched model on the same data and shifts, and their latencies.
    ``baseline_recalibrated``: the original with the patch's BatchNorm layers re-estimated alike (the control that
    separates what the blur buys from what fresh statistics buy)."""

    before: AuditResult
    after: AuditResult
    latency: PatchLatency
    baseline_recalibrated: AuditResult | None = None


@dataclass(frozen=True)
class PatchReport:
    """What a patch did to ``model`` (the checkpoint as given) and, with ``comparison``, what it changed.

    ``recalibration``/``calibration_data``/``calibration_seed``: the BatchNorm re-estimation and its images;
    ``distillation``/``distill_data``: the fine-tuning towards the original; ``agreement``: the patched model's
    zero-shift top-1 agreement with the original on the audited data, ``min_agreement`` the share below which that
    is worth a warning; ``output``: where the patched model was saved.
    """

    model: str
    patch: PatchResult
    recalibration: Recalibration | None = None
    calibration_data: str | None = None
    calibration_seed: int = 0
    distillation: DistillResult | None = None
    distill_data: str | None = None
    agreement: float | None = None
    min_agreement: float = 0.9
    output: str | None = None
    comparison: PatchComparison | None = None

    @property
    def agreement_too_low(self) -> bool:
        return self.agreement is not None and self.agreement < self.min_agreement

    def to_json(self) -> dict[str, Any]:
        report: dict[str, Any] = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "model": self.model, **self.patch.to_json()}
        if self.recalibration is not None:
            report["recalibrated_images"] = self.recalibration.images
            report["recalibration"] = {
                **self.recalibration.to_json(),
                "data": self.calibration_data,
                "seed": self.calibration_seed,
            }
        if self.distillation is not None:
            report["distill"] = {**self.distillation.to_json(), "data": self.distill_data}
        if self.agreement is not None:
            report["agreement"] = {"zero_shift_top1": self.agreement, "threshold": self.min_agreement}
        if self.output is not None:
            report["output"] = self.output
        c = self.comparison
        if c is not None:
            report["before"] = c.before.to_json()
            report["after"] = c.after.to_json()
            if c.baseline_recalibrated is not None:
                report["baseline_recalibrated"] = c.baseline_recalibrated.to_json()
            report["latency_ms"] = c.latency.to_json()
        return report


def compare_patch(
    original: nn.Module,
    patch: PatchResult,
    before: AuditResult,
    after: AuditResult,
    *,
    input_shape: tuple[int, ...],
    device: Any = "cpu",
    baseline_recalibrated: AuditResult | None = None,
) -> PatchComparison:
    """Put the two audits side by side and time both models on ``input_shape``: the before/after comparison."""
    baseline, patched = compare_latency_stats([original, patch.model], input_shape, device=device)
    latency = PatchLatency(baseline, patched, tuple(input_shape), str(device))
    return PatchComparison(before, after, latency, baseline_recalibrated)
