"""Top-1 accuracy without shift and at one random shift per image (Table 1's "None" and "Rand")."""

from __future__ import annotations

from typing import Any

import numpy as np

from shiftaudit.metrics.base import Metric, PerImageMetric, ShiftBatch
from shiftaudit.metrics.stats import proportion


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


class ZeroShiftConfidence(Metric):
    """Mean top-1 probability at zero shift; not reported, only read to flag a likely label mismatch.

    A model that is confident yet about 0 % accurate is almost always audited with the wrong labels (folders mapped
    to the wrong class indices), not a bad model: the engine then adds a warning note.
    """

    name = "confidence"
    needs_labels = False
    reported = False
    early_exit_safe = True  # reads the zero shift only

    def __init__(self) -> None:
        self.sum_p = np.zeros(1, dtype=np.float64)
        self.sum_n = np.zeros(1, dtype=np.int64)

    def update(self, batch: ShiftBatch) -> None:
        p = batch.at(batch.p_top, batch.zero_slot).astype(np.float64)
        self.sum_p = self.sum_p + p.sum()
        self.sum_n = self.sum_n + p.size

    def compute(self) -> dict[str, Any]:
        n = int(self.sum_n[0])
        return {"mean_top1": float(self.sum_p[0]) / n if n else float("nan"), "n": n}

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"sum_p": self.sum_p, "sum_n": self.sum_n}
