"""Two label-free stability measures beside consistency: how much the confidence moves, and how often a one-pixel
step flips the answer.

* **Mean absolute change (MAC)** of the top-1 probability between shifted copies of an image: over the random pairs
  of the consistency protocol, ``|p_top(Shift_a X) - p_top(Shift_b X)|``. It sees the confidence wobble that
  consistency (which counts only flips) does not.
* **Flip rate** along consecutive one-pixel shifts: over every pair of shifts of the set that are one pixel apart
  (vertically or horizontally, modulo the size), the share whose predicted classes differ. This is the
  "walk the image one pixel at a time" view of Fig. 2; it needs every shift evaluated.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shiftaudit.metrics.base import Metric, MetricContext, PerImageMetric, Reading, ShiftBatch
from shiftaudit.metrics.entries import PairSummary, Summary
from shiftaudit.metrics.registry import register_metric
from shiftaudit.metrics.stats import summary
from shiftaudit.shifts.sets import ShiftSet


def neighbour_pairs(shifts: ShiftSet) -> np.ndarray:
    """(P, 2) indices of the shift pairs one pixel apart (down or right) inside the set: modulo the size for the
    periodic modes (circular, subpixel), without wrapping for crop shifts (offsets of a canvas)."""
    h, w = shifts.height, shifts.width
    fh, fw = shifts.wraps and h, shifts.wraps and w

    def key(a: float, n: int | bool) -> float:
        return round(float(a) % n, 6) % n if n else round(float(a), 6)

    index = {(key(a, fh), key(b, fw)): i for i, (a, b) in enumerate(zip(shifts.dh, shifts.dw))}
    pairs = []
    for (a, b), i in index.items():
        for na, nb in ((key(a + 1, fh), b), (a, key(b + 1, fw))):
            j = index.get((na, nb))
            if j is not None and j != i:
                pairs.append((i, j))
    return np.asarray(sorted(set(pairs)), dtype=np.int64).reshape(-1, 2)


@register_metric
class FlipRate(PerImageMetric):
    name = "flip_rate"
    compares_shifts = True
    report_rank = 90
    entry_type = PairSummary
    needs_labels = False
    needs_all_shifts = True
    display_order = 60

    @classmethod
    def default_for(cls, ctx: MetricContext) -> Metric | None:
        if not ctx.exhaustive:
            return None
        metric = cls(ctx.shift_set)
        if metric.pairs.size:
            return metric
        # a grid with a step has no 1-px neighbours: omit the metric rather than report an empty mean (nan)
        step = ctx.shift_set.step
        advice = "pass --shift-step 1 to measure it" if step != 1 else "evaluate shifts one pixel apart to measure it"
        ctx.notes.append(
            f"flip rate between 1-px neighbouring shifts not reported: no two shifts of the set are one pixel "
            f"apart (step {step:g}); {advice}"
        )
        return None

    @classmethod
    def readings(cls, entry: PairSummary, settings: dict[str, Any]) -> list[Reading]:
        return [
            Reading(
                "Flip rate between 1-px neighbouring shifts",
                entry.mean,
                entry.ci_low,
                entry.ci_high,
                digits=2,
                ci_digits=2,
            )
        ]

    def __init__(self, shifts: ShiftSet) -> None:
        super().__init__()
        self.pairs = neighbour_pairs(shifts)

    def update(self, batch: ShiftBatch) -> None:
        if self.pairs.size == 0:
            return
        preds = batch.preds  # exhaustive: slot s is shift s
        flips = preds[:, self.pairs[:, 0]] != preds[:, self.pairs[:, 1]]
        self._append(batch.image_ids, flips.mean(axis=1))

    def compute(self) -> PairSummary:
        share = summary(self.sorted_values()[1], bounds=(0.0, 1.0))  # a share of pairs
        return PairSummary(**share, pairs_per_image=int(self.pairs.shape[0]))


@register_metric
class MeanAbsoluteChange(PerImageMetric):
    name = "mac"
    compares_shifts = True
    report_rank = 100
    entry_type = Summary
    needs_labels = False
    display_order = 70

    @classmethod
    def default_for(cls, ctx: MetricContext) -> Metric | None:
        return cls()

    @classmethod
    def readings(cls, entry: Summary, settings: dict[str, Any]) -> list[Reading]:
        return [
            Reading(
                "Mean abs. change of top-1 probability",
                entry.mean,
                entry.ci_low,
                entry.ci_high,
                percent=False,
                digits=4,
                ci_digits=4,
            )
        ]

    def update(self, batch: ShiftBatch) -> None:
        a = batch.at(batch.p_top, batch.pair_slots[:, :, 0]).astype(np.float64)
        b = batch.at(batch.p_top, batch.pair_slots[:, :, 1]).astype(np.float64)
        self._append(batch.image_ids, np.abs(a - b).mean(axis=1))

    def compute(self) -> Summary:
        return summary(self.sorted_values()[1], bounds=(0.0, 1.0))  # a change of a probability
