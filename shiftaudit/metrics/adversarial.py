"""Accuracy under a max-shift adversary (App. B, Fig. 9).

An image counts as correct at radius r only if it is classified correctly at every shift of the set within
``[-r, r]^2``. It is therefore enough to keep, per image, the smallest radius at which it is misclassified:
correct at r  <=>  first_failure_radius > r. The curve is non-increasing and r = 0 is plain accuracy.
Sub-pixel shift sets have fractional radii: the curve is drawn at the distinct radii of the set, and the per-image
radii are kept as floats (with +inf for "never misclassified").
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shiftaudit.metrics.base import Metric, MetricContext, PerImageMetric, Reading, ShiftBatch
from shiftaudit.metrics.entries import Curve
from shiftaudit.metrics.registry import register_metric
from shiftaudit.metrics.stats import wilson_interval
from shiftaudit.shifts.sets import ShiftSet

NEVER = np.iinfo(np.int64).max


def radius_json(v: float | int) -> int | float | None:
    """A per-image first-failure radius for JSON: None for never, an int when whole, else a float."""
    if isinstance(v, (int, np.integer)):
        return None if int(v) == NEVER else int(v)
    f = float(v)
    if not np.isfinite(f) or f >= float(NEVER):
        return None
    return int(round(f)) if abs(f - round(f)) < 1e-9 else round(f, 6)


@register_metric
class AdversarialCurve(PerImageMetric):
    name = "adversarial"
    report_rank = 60
    entry_type = Curve
    per_image_column = "first_failure_radius"
    needs_all_shifts = True
    early_exit_safe = True  # an image's first misclassified shift is all it needs
    display_order = 80

    @staticmethod
    def per_image_json(v: float | int) -> int | float | None:
        return radius_json(v)

    @classmethod
    def default_for(cls, ctx: MetricContext) -> Metric | None:
        return cls(ctx.shift_set) if ctx.exhaustive and ctx.labelled else None

    @classmethod
    def readings(cls, entry: Curve, settings: dict[str, Any]) -> list[Reading]:
        return [
            Reading(f"Adversarial accuracy, max shift {r} px", a, lo, hi, radius=r)
            for r, a, lo, hi in zip(entry.radius, entry.accuracy, entry.ci_low, entry.ci_high)
        ]

    def __init__(self, shift_set: ShiftSet) -> None:
        super().__init__()
        self.shift_radius = shift_set.radius
        self.radii = shift_set.radii
        self.fractional = shift_set.radius.dtype.kind == "f"
        # exact integer radii (float64 cannot hold NEVER exactly); sub-pixel radii as floats (inf: never)
        self.value_dtype = np.float64 if self.fractional else np.int64

    def update(self, batch: ShiftBatch) -> None:
        assert batch.labels is not None
        wrong = batch.preds != batch.labels[:, None]
        radius = self.shift_radius[batch.shift_index]
        first = np.where(wrong, radius, np.inf if self.fractional else NEVER).min(axis=1)
        self._append(batch.image_ids, first)

    def first_failure(self) -> np.ndarray:
        dt = np.float64 if self.fractional else np.int64
        return self.sorted_values()[1].astype(dt) if self.values.size else np.zeros(0, dt)

    def compute(self) -> Curve:
        first = self.first_failure()
        n = int(first.size)
        acc = [float((first > r).mean()) if n else float("nan") for r in self.radii]
        ci = [wilson_interval(a, n) for a in acc]
        return Curve(radius=list(self.radii), accuracy=acc, ci_low=[c[0] for c in ci], ci_high=[c[1] for c in ci], n=n)
