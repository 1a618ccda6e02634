"""Top-1 accuracy without shift and at one random shift per image (Table 1's "None" and "Rand")."""

from __future__ import annotations

from typing import Any

from .base import PerImageMetric, ShiftBatch
from .stats import proportion


class AccuracyAtZeroShift(PerImageMetric):
    name = "accuracy_none"

    def update(self, batch: ShiftBatch) -> None:
        assert batch.labels is not None
        pred = batch.at(batch.preds, batch.zero_slot)
        self._append(batch.image_ids, pred == batch.labels)

    def compute(self) -> dict[str, Any]:
        return proportion(self.sorted_values()[1])


class AccuracyAtRandomShift(PerImageMetric):
    """One uniformly drawn shift of the set per image, seeded per image (never one shift for a whole batch)."""

    name = "accuracy_random"

    def update(self, batch: ShiftBatch) -> None:
        assert batch.labels is not None
        pred = batch.at(batch.preds, batch.random_slot)
        self._append(batch.image_ids, pred == batch.labels)

    def compute(self) -> dict[str, Any]:
        return proportion(self.sorted_values()[1])
