"""Classification consistency (§4.2.2): P[argmax f(Shift_a X) = argmax f(Shift_b X)] for independent uniform a, b."""

from __future__ import annotations

from typing import Any

import numpy as np

from shiftaudit.metrics.base import Metric, MetricContext, PerImageMetric, Reading, ShiftBatch
from shiftaudit.metrics.entries import Proportion
from shiftaudit.metrics.registry import register_metric
from shiftaudit.metrics.stats import proportion


@register_metric
class SampledConsistency(PerImageMetric):
    """The paper's protocol: k random pairs (a, b) per image, drawn independently (a = b allowed), seeded per image."""

    name = "consistency_sampled"
    compares_shifts = True
    report_rank = 30
    report_key = ("consistency", "sampled")
    entry_type = Proportion
    per_image_column = "sampled_agreement"
    needs_labels = False
    display_order = 40

    @classmethod
    def default_for(cls, ctx: MetricContext) -> Metric | None:
        return cls()

    @classmethod
    def readings(cls, entry: Proportion, settings: dict[str, Any]) -> list[Reading]:
        k = settings.get("pairs", "?")
        return [Reading(f"Consistency (sampled, {k} pairs/image)", entry.value, entry.ci_low, entry.ci_high, digits=2)]

    def update(self, batch: ShiftBatch) -> None:
        a = batch.at(batch.preds, batch.pair_slots[:, :, 0])
        b = batch.at(batch.preds, batch.pair_slots[:, :, 1])
        self._append(batch.image_ids, (a == b).mean(axis=1))

    def compute(self) -> Proportion:
        return proportion(self.sorted_values()[1])


@register_metric
class ExactConsistency(PerImageMetric):
    """The expectation itself, when every shift of the set was evaluated.

    With ``p_c`` the share of shifts at which image X is classified as c, two independent uniform shifts agree with
    probability ``sum_c p_c^2``. Averaged over images this is the value the sampled estimator converges to.
    """

    name = "consistency_exact"
    compares_shifts = True
    report_rank = 40
    report_key = ("consistency", "exact")
    entry_type = Proportion
    per_image_column = "exact_consistency"
    needs_labels = False
    needs_all_shifts = True
    display_order = 30

    @classmethod
    def default_for(cls, ctx: MetricContext) -> Metric | None:
        return cls() if ctx.exhaustive else None

    @classmethod
    def readings(cls, entry: Proportion, settings: dict[str, Any]) -> list[Reading]:
        return [Reading("Consistency (exact, all shifts)", entry.value, entry.ci_low, entry.ci_high, digits=2)]

    def update(self, batch: ShiftBatch) -> None:
        preds = batch.preds
        b, s = preds.shape
        counts = np.zeros((b, batch.num_classes), dtype=np.int64)
        np.add.at(counts, (np.repeat(np.arange(b), s), preds.reshape(-1)), 1)
        share = counts / float(s)
        self._append(batch.image_ids, (share * share).sum(axis=1))

    def compute(self) -> Proportion:
        return proportion(self.sorted_values()[1])
