"""Classification variation (§4.2.3, Fig. 6): per image, the standard deviation over all shifts of P(correct class)."""

from __future__ import annotations

from typing import Any

import numpy as np

from shiftaudit.metrics.base import PerImageMetric, ShiftBatch
from shiftaudit.metrics.stats import summary


class Variation(PerImageMetric):
    name = "variation"
    needs_all_shifts = True

    def update(self, batch: ShiftBatch) -> None:
        assert batch.p_label is not None
        p = batch.p_label.astype(np.float64)
        self._append(batch.image_ids, p.std(axis=1))

    def compute(self) -> dict[str, Any]:
        return summary(self.sorted_values()[1], bounds=(0.0, 1.0))  # a std of a probability
