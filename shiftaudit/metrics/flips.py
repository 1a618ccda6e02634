"""A few images whose correct prediction a small shift breaks, with P(correct) at every shift (the paper's Fig. 2).

Reports need concrete examples next to the averages: "this image is right as given and wrong one pixel to the
right". Only a bounded handful is kept (the ``limit`` images that fail at the smallest shift radius, ties broken by
image id), so the state and the JSON stay small however large the data set is.
"""

from __future__ import annotations

import numpy as np

from shiftaudit.metrics.base import Metric, MetricContext, ShiftBatch
from shiftaudit.metrics.entries import FlipExample, Flips
from shiftaudit.metrics.registry import register_metric
from shiftaudit.shifts.sets import ShiftSet, offset_json

MAX_STORED_SHIFTS = 1089  # at most a 33 x 33 window of P(correct) values per example


@register_metric
class FlipExamples(Metric):
    """Keeps, for up to ``limit`` images correct at zero shift and wrong at some shift, P(correct) over the shifts.

    Without labels (``reference="prediction"``) the reference is the prediction at zero shift: an image flips when a
    shift changes its prediction, and the stored grid is 1 where the shifted prediction agrees with the unshifted
    one, 0 where it changed (the probability of the unshifted class is not computed for unlabelled data).
    """

    name = "flip_examples"
    compares_shifts = True
    report_rank = 80
    entry_type = Flips
    needs_all_shifts = True
    ids: np.ndarray
    label: np.ndarray
    radius: np.ndarray
    flip_shift: np.ndarray
    flip_pred: np.ndarray
    p_correct: np.ndarray

    @classmethod
    def default_for(cls, ctx: MetricContext) -> Metric | None:
        if not ctx.exhaustive:
            return None
        # no labels: the prediction at zero shift is the reference an image flips away from
        return cls(ctx.shift_set) if ctx.labelled else cls(ctx.shift_set, reference="prediction")

    def __init__(self, shift_set: ShiftSet, limit: int = 4, reference: str = "label") -> None:
        if reference not in ("label", "prediction"):
            raise ValueError(f"reference must be 'label' or 'prediction', not {reference!r}")
        self.needs_labels = reference == "label"  # type: ignore[misc]
        self.reference = reference
        self.shift_set = shift_set
        self.limit = int(limit)
        radius = shift_set.radius
        levels = np.unique(radius) if len(shift_set) else np.zeros(1, dtype=radius.dtype)
        k_keep = len(levels) - 1  # the largest radius level whose window fits the storage bound
        while k_keep > 0 and int((radius <= levels[k_keep]).sum()) > MAX_STORED_SHIFTS:
            k_keep -= 1
        self.stored = np.flatnonzero(radius <= levels[k_keep])  # shift indices whose P(correct) is stored
        s = len(self.stored)
        self._never = np.inf if radius.dtype.kind == "f" else np.iinfo(np.int64).max
        self.add_state("ids", np.zeros(0, dtype=np.int64), "cat")
        self.add_state("label", np.zeros(0, dtype=np.int64), "cat")
        self.add_state("radius", np.zeros(0, dtype=radius.dtype), "cat")  # float for sub-pixel sets
        self.add_state("flip_shift", np.zeros(0, dtype=np.int64), "cat")  # index in the shift set of the breaking shift
        self.add_state("flip_pred", np.zeros(0, dtype=np.int64), "cat")
        self.add_state("p_correct", np.zeros((0, s), dtype=np.float32), "cat")

    def update(self, batch: ShiftBatch) -> None:
        n = len(batch)
        p_all = np.full((n, len(self.shift_set)), np.nan, dtype=np.float32)
        pred_all = np.full((n, len(self.shift_set)), -1, dtype=np.int64)
        rows = np.arange(n)[:, None]
        pred_all[rows, batch.shift_index] = batch.preds
        zero = self.shift_set.zero_index
        if self.reference == "label":
            assert batch.labels is not None and batch.p_label is not None
            labels = batch.labels
            p_all[rows, batch.shift_index] = batch.p_label
        else:
            labels = pred_all[:, zero]
            p_all[rows, batch.shift_index] = (batch.preds == labels[:, None]).astype(np.float32)
        wrong = (pred_all != labels[:, None]) & (pred_all >= 0)
        keep = (~wrong[:, zero]) & wrong.any(axis=1)
        if not keep.any():
            return
        idx = np.flatnonzero(keep)
        radius = self.shift_set.radius
        first = np.where(wrong[idx], radius[None, :], self._never).min(axis=1)
        # At the first failing radius, the shift where the correct class is least likely.
        at_first = wrong[idx] & (radius[None, :] == first[:, None])
        flip = np.where(at_first, p_all[idx], np.inf).argmin(axis=1)
        self._add(
            batch.image_ids[idx],
            labels[idx],
            first,
            flip,
            pred_all[idx, flip],
            p_all[idx][:, self.stored],
        )

    def _add(
        self, ids: np.ndarray, label: np.ndarray, radius: np.ndarray, flip: np.ndarray, pred: np.ndarray, p: np.ndarray
    ) -> None:
        self.ids = np.concatenate([self.ids, ids.astype(np.int64)])
        self.label = np.concatenate([self.label, label.astype(np.int64)])
        self.radius = np.concatenate([self.radius, radius.astype(self.radius.dtype)])
        self.flip_shift = np.concatenate([self.flip_shift, flip.astype(np.int64)])
        self.flip_pred = np.concatenate([self.flip_pred, pred.astype(np.int64)])
        self.p_correct = np.concatenate([self.p_correct, p.astype(np.float32)])
        self._truncate()

    def _truncate(self) -> None:
        order = np.lexsort((self.ids, self.radius))[: self.limit]
        for key in ("ids", "label", "radius", "flip_shift", "flip_pred", "p_correct"):
            setattr(self, key, getattr(self, key)[order])

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        super().load_state_dict(state)
        self._truncate()

    def compute(self) -> Flips:
        ss = self.shift_set
        dh, dw = ss.dh[self.stored], ss.dw[self.stored]
        hs, ws = np.unique(dh), np.unique(dw)
        hpos = {v: i for i, v in enumerate(hs.tolist())}  # exact keys: sub-pixel offsets are fractional
        wpos = {v: i for i, v in enumerate(ws.tolist())}
        examples = []
        for k in range(len(self.ids)):
            grid: list[list[float | None]] = [[None] * len(ws) for _ in hs]
            for j, (h, w) in enumerate(zip(dh, dw)):
                v = float(self.p_correct[k, j])
                grid[hpos[h.item()]][wpos[w.item()]] = round(v, 4) if np.isfinite(v) else None
            f = int(self.flip_shift[k])
            examples.append(
                FlipExample(
                    image_id=int(self.ids[k]),
                    label=int(self.label[k]),
                    first_failure_radius=offset_json(self.radius[k]),
                    flip_shift=[offset_json(ss.dh[f]), offset_json(ss.dw[f])],
                    flip_prediction=int(self.flip_pred[k]),
                    p_correct=grid,
                )
            )
        # unlabelled: "label" is the class predicted at zero shift, "p_correct" 1 where a shift keeps it, 0 where not
        reference = "zero-shift prediction" if self.reference == "prediction" else None
        return Flips(self.limit, [offset_json(v) for v in hs], [offset_json(v) for v in ws], examples, reference)
