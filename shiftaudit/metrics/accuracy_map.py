"""Accuracy as a function of the shift (App. D, Fig. 11): a (dh, dw) map and its diagonal profile."""

from __future__ import annotations

from typing import Any

import numpy as np

from shiftaudit.metrics.base import Metric, MetricContext, Reading, ShiftBatch
from shiftaudit.metrics.entries import Diagonal, Grid
from shiftaudit.metrics.registry import register_metric
from shiftaudit.shifts.sets import ShiftSet, offset_json


@register_metric
class AccuracyMap(Metric):
    name = "accuracy_map"
    compares_shifts = True
    report_rank = 70
    entry_type = Grid
    needs_all_shifts = True
    display_order = 90
    sum_correct: np.ndarray
    sum_images: np.ndarray

    def __init__(self, shift_set: ShiftSet) -> None:
        self.shift_set = shift_set
        self.add_state("sum_correct", np.zeros(len(shift_set), dtype=np.int64), "sum")
        self.add_state("sum_images", np.zeros(1, dtype=np.int64), "sum")

    @classmethod
    def default_for(cls, ctx: MetricContext) -> Metric | None:
        return cls(ctx.shift_set) if ctx.exhaustive and ctx.labelled else None

    @classmethod
    def readings(cls, entry: Grid, settings: dict[str, Any]) -> list[Reading]:
        label = "Accuracy over shifts"
        return [Reading(label, entry.min, part="worst"), Reading(label, entry.max, part="best")]

    def update(self, batch: ShiftBatch) -> None:
        assert batch.labels is not None
        correct = batch.preds == batch.labels[:, None]
        np.add.at(self.sum_correct, batch.shift_index.reshape(-1), correct.reshape(-1).astype(np.int64))
        self.sum_images += len(batch)

    def per_shift(self) -> np.ndarray:
        n = int(self.sum_images[0])
        return self.sum_correct / n if n else np.full(len(self.shift_set), np.nan)

    def compute(self) -> Grid:
        ss = self.shift_set
        acc = self.per_shift()
        hs = np.unique(ss.dh)
        ws = np.unique(ss.dw)
        grid: list[list[float | None]] = [[None] * len(ws) for _ in hs]
        hpos = {v: i for i, v in enumerate(hs.tolist())}  # exact keys: sub-pixel offsets are fractional
        wpos = {v: i for i, v in enumerate(ws.tolist())}
        for k in range(len(ss)):
            grid[hpos[ss.dh[k].item()]][wpos[ss.dw[k].item()]] = float(acc[k])
        diag = np.flatnonzero(ss.dh == ss.dw)
        diag = diag[np.argsort(ss.dh[diag])]
        return Grid(
            dh=[offset_json(v) for v in hs],
            dw=[offset_json(v) for v in ws],
            accuracy=grid,
            diagonal=Diagonal(shift=[offset_json(ss.dh[k]) for k in diag], accuracy=[float(acc[k]) for k in diag]),
            min=float(np.nanmin(acc)) if acc.size else float("nan"),
            max=float(np.nanmax(acc)) if acc.size else float("nan"),
            n=int(self.sum_images[0]),
        )
