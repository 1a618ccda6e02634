"""Classification variation (§4.2.3, Fig. 6): per image, the standard deviation over all shifts of P(correct class)."""

from __future__ import annotations

from typing import Any

import numpy as np

from shiftaudit.metrics.base import Metric, MetricContext, PerImageMetric, Reading, ShiftBatch
from shiftaudit.metrics.entries import Summary
from shiftaudit.metrics.registry import register_metric
from shiftaudit.metrics.stats import summary


@register_metric
class Variation(PerImageMetric):
    name = "variation"
    compares_shifts = True
    report_rank = 50
    entry_type = Summary
    per_image_column = "variation"
    needs_all_shifts = True
    display_order = 50

    @classmethod
    def default_for(cls, ctx: MetricContext) -> Metric | None:
        return cls() if ctx.exhaustive and ctx.labelled else None

    @classmethod
    def readings(cls, entry: Summary, settings: dict[str, Any]) -> list[Reading]:
        label = "Variation of P(correct)"
        return [
            Reading(label, entry.mean, entry.ci_low, entry.ci_high, percent=False, digits=4, ci_digits=4, part="mean"),
            Reading(label, entry.median, percent=False, digits=4, part="median"),
        ]

    def update(self, batch: ShiftBatch) -> None:
        assert batch.p_label is not None
        p = batch.p_label.astype(np.float64)
        self._append(batch.image_ids, p.std(axis=1))

    def compute(self) -> Summary:
        return summary(self.sorted_values()[1], bounds=(0.0, 1.0))  # a std of a probability
