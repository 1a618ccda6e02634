"""Top-1 accuracy without shift and at one random shift per image (Table 1's "None" and "Rand")."""

from __future__ import annotations

from typing import Any

import numpy as np

from shiftaudit.metrics.base import Metric, MetricContext, PerImageMetric, Reading, ShiftBatch
from shiftaudit.metrics.entries import Proportion
from shiftaudit.metrics.registry import register_metric
from shiftaudit.metrics.stats import proportion


def proportion_reading(label: str, entry: Proportion, digits: int = 1) -> Reading:
    return Reading(label, entry.value, entry.ci_low, entry.ci_high, digits=digits)


@register_metric
class AccuracyAtZeroShift(PerImageMetric):
    name = "accuracy_none"
    report_rank = 10
    report_key = ("accuracy", "none")
    entry_type = Proportion
    per_image_column = "correct"
    per_image_type = bool
    early_exit_safe = True  # reads the zero shift only
    display_order = 10

    @staticmethod
    def per_image_json(value: Any) -> Any:
        return bool(value)

    @classmethod
    def default_for(cls, ctx: MetricContext) -> Metric | None:
        return cls() if ctx.labelled else None

    @classmethod
    def readings(cls, entry: Proportion, settings: dict[str, Any]) -> list[Reading]:
        return [proportion_reading("Accuracy, no shift", entry)]

    def update(self, batch: ShiftBatch) -> None:
        assert batch.labels is not None
        pred = batch.at(batch.preds, batch.zero_slot)
        self._append(batch.image_ids, pred == batch.labels)

    def compute(self) -> Proportion:
        return proportion(self.sorted_values()[1])


@register_metric
class AccuracyAtRandomShift(PerImageMetric):
    """One uniformly drawn shift of the set per image, seeded per image (never one shift for a whole batch)."""

    name = "accuracy_random"
    compares_shifts = True
    report_rank = 20
    report_key = ("accuracy", "random")
    entry_type = Proportion
    display_order = 20

    @classmethod
    def default_for(cls, ctx: MetricContext) -> Metric | None:
        return cls() if ctx.labelled else None

    @classmethod
    def readings(cls, entry: Proportion, settings: dict[str, Any]) -> list[Reading]:
        return [proportion_reading("Accuracy, random shift", entry)]

    def update(self, batch: ShiftBatch) -> None:
        assert batch.labels is not None
        pred = batch.at(batch.preds, batch.random_slot)
        self._append(batch.image_ids, pred == batch.labels)

    def compute(self) -> Proportion:
        return proportion(self.sorted_values()[1])


@register_metric
class ZeroShiftConfidence(Metric):
    """Mean top-1 probability at zero shift; not reported, only read to flag a likely label mismatch.

    A model that is confident yet about 0 % accurate is almost always audited with the wrong labels (folders mapped
    to the wrong class indices), not a bad model: the engine then adds a warning note.
    """

    name = "confidence"
    report_rank = 25
    needs_labels = False
    reported = False
    early_exit_safe = True  # reads the zero shift only
    sum_p: np.ndarray
    sum_n: np.ndarray

    def __init__(self) -> None:
        self.add_state("sum_p", np.zeros(1, dtype=np.float64), "sum")
        self.add_state("sum_n", np.zeros(1, dtype=np.int64), "sum")

    @classmethod
    def default_for(cls, ctx: MetricContext) -> Metric | None:
        return cls() if ctx.labelled else None

    def update(self, batch: ShiftBatch) -> None:
        p = batch.at(batch.p_top, batch.zero_slot).astype(np.float64)
        self.sum_p = self.sum_p + p.sum()
        self.sum_n = self.sum_n + p.size

    def compute(self) -> dict[str, Any]:
        n = int(self.sum_n[0])
        return {"mean_top1": float(self.sum_p[0]) / n if n else float("nan"), "n": n}
