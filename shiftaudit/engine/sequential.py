"""The sequential gate: stop drawing as soon as every threshold is clearly met or clearly missed.

A CI gate asks "is exact consistency >= 0.95?", not for the value to four digits. Every gated number is the mean over
the data's images of a per-image quantity, so uniform random draws estimate it without bias:

- exact consistency: an image and two independent uniform shifts of the set; 1 when the two predictions agree
  (the expectation is ``sum_c p_c^2`` per image, the exact estimator's own definition); for an image whose every
  shift is already cached, that expectation itself (same mean, less variance);
- accuracy without shift: an image; 1 when its zero-shift prediction is right;
- adversarial accuracy at radius r: an image; 1 when it is right at every shift of radius <= r (walked in order of
  growing radius, stopping at the first mistake);
- variation: an image; twice the standard deviation of P(label) over every shift (in [0, 1]).

Draws come in rounds from a seeded stream (:mod:`shiftaudit.rng`), one observation per threshold per drawn image, and
feed an anytime-valid betting confidence sequence per threshold (:mod:`shiftaudit.engine.betting`) at level
``decision_error / thresholds``. A threshold is decided when its interval lies wholly on one side; so the chance that
any verdict differs from the exhaustive audit's is at most ``decision_error``. Predictions are cached per (image,
shift): an image drawn twice costs nothing the second time, and the forwards spent can never exceed the exhaustive
audit's. When they reach ``budget`` of it undecided (a value within noise of a threshold), the exhaustive audit runs
and decides exactly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from shiftaudit.data import make_loader
from shiftaudit.engine.betting import BettingSequence
from shiftaudit.engine.forward import model_dtype
from shiftaudit.engine.plan import PreparedAudit
from shiftaudit.rng import STREAM_SEQUENTIAL_IMAGE, STREAM_SEQUENTIAL_SHIFTS, uniform_integers
from shiftaudit.shifts.modes import make_bank

FIRST_ROUND = 32  # images drawn in the first round; later rounds grow by half, so the looks are geometric
MAX_ROUND = 4096
DRAWS_PER_IMAGE = 64  # past this many draws per image every observation repeats cached ones: the full audit decides


class Undecided(Exception):
    """The sequential gate stops without a verdict; the exhaustive audit decides (the message says why)."""


@dataclass
class GateStatistic:
    """One threshold's stream of observations: each drawn image's value, scaled into [0, 1]."""

    threshold: Any
    sequence: BettingSequence
    scale: float = 1.0  # observation = value * scale (variation: the std of a probability is at most 1/2)

    @property
    def decision(self) -> bool | None:
        """True: the threshold holds; False: it fails; None: not decided yet."""
        t = self.threshold.value * self.scale
        if self.threshold.bound == "min":
            return True if self.sequence.above(t) else False if self.sequence.below(t) else None
        return True if self.sequence.below(t) else False if self.sequence.above(t) else None

    def to_json(self) -> dict[str, Any]:
        s = self.sequence
        return {
            "metric": self.threshold.metric,
            "radius": self.threshold.radius,
            "estimate": s.mean / self.scale,
            "ci_low": s.low / self.scale,
            "ci_high": s.high / self.scale,
            "confidence": 1.0 - s.alpha,
            "draws": s.count,
            "decision": {True: "pass", False: "fail", None: "undecided"}[self.decision],
        }


@dataclass
class PredictionCache:
    """Predictions per (image, shift) already computed: -1 marks a pair not run yet."""

    num_shifts: int
    pred: dict[int, np.ndarray] = field(default_factory=dict)
    p_label: dict[int, np.ndarray] = field(default_factory=dict)

    def row(self, image: int) -> np.ndarray:
        if image not in self.pred:
            self.pred[image] = np.full(self.num_shifts, -1, dtype=np.int64)
            self.p_label[image] = np.zeros(self.num_shifts, dtype=np.float64)
        return self.pred[image]

    def missing(self, image: int, shifts: np.ndarray) -> np.ndarray:
        return np.unique(shifts[self.row(image)[shifts] < 0])


class SequentialGate:
    """Draws rounds of images, runs the (image, shift) pairs not cached yet, feeds each threshold's sequence."""

    def __init__(self, prepared: PreparedAudit, decision_error: float, budget: float) -> None:
        self.prepared = prepared
        plan = prepared.plan
        self.shifts = plan.shifts
        self.num_images = len(prepared.dataset)
        thresholds = list(prepared.config.thresholds)
        alpha = decision_error / len(thresholds)  # Bonferroni over the checks: the whole verdict errs <= decision_error
        self.stats = [GateStatistic(t, BettingSequence(alpha), 2.0 if t.metric == "variation" else 1.0) for t in thresholds]
        self.cache = PredictionCache(len(self.shifts))
        self.labels: dict[int, int] = {}
        self.exhaustive_rows = self.num_images * len(self.shifts)
        self.budget_rows = budget * self.exhaustive_rows
        self.rows = 0
        self.draws = 0
        self.complete: set[int] = set()
        radii = [t.radius for t in thresholds if t.metric == "adversarial"]
        self.adv_count = int(np.searchsorted(self.shifts.radius, max(radii), side="right")) if radii else 0
        self.needs_all = any(t.metric == "variation" for t in thresholds)
        off_dtype = torch.float64 if self.shifts.fractional else torch.long
        self.dh = torch.as_tensor(self.shifts.dh, dtype=off_dtype, device=prepared.device)
        self.dw = torch.as_tensor(self.shifts.dw, dtype=off_dtype, device=prepared.device)

    @property
    def decided(self) -> bool:
        return all(s.decision is not None for s in self.stats)

    def run(self, progress: Any) -> None:
        """Rounds until every threshold is decided; raises :class:`Undecided` past the budget."""
        size = FIRST_ROUND
        while not self.decided:
            if self.rows >= self.budget_rows or self.draws >= DRAWS_PER_IMAGE * self.num_images:
                raise Undecided(
                    f"undecided after {self.rows:,} forward passes ({100 * self.rows / self.exhaustive_rows:.0f} % of "
                    "the exhaustive audit's): a value within noise of its threshold"
                )
            before = self.rows
            self._round(size)
            if progress is not None:
                progress.advance(min(self.rows, int(self.budget_rows)) - min(before, int(self.budget_rows)))
            size = min(MAX_ROUND, size + size // 2)

    def _round(self, size: int) -> None:
        draw_ids = np.arange(self.draws, self.draws + size, dtype=np.int64)
        self.draws += size
        images = uniform_integers(self.prepared.config.seed, STREAM_SEQUENTIAL_IMAGE, draw_ids, 1, self.num_images)[:, 0]
        pairs = uniform_integers(self.prepared.config.seed, STREAM_SEQUENTIAL_SHIFTS, draw_ids, 2, len(self.shifts))
        # images whose every shift was already run before this round: their consistency observation is the exact
        # per-image value sum_c p_c^2 (the draw's expectation given the image; decided before the round's forwards, so
        # the choice cannot lean on this round's outcomes)
        self.complete = {i for i in np.unique(images).tolist() if i in self.cache.pred and bool((self.cache.pred[i] >= 0).all())}
        x, position, readable = self._load(np.unique(images))
        if readable.size == 0:
            raise Undecided("drew no readable image in a round")
        keep = np.isin(images, readable)  # an unreadable image is not part of the audited data: its draw is void
        images, pairs = images[keep], pairs[keep]
        wanted = self._planned_shifts(images, pairs)
        self._forward(x, position, wanted)
        if self.adv_count:
            self._adversarial_walk(x, position, np.unique(images))
        for stat in self.stats:
            stat.sequence.extend(self._observe(stat.threshold, images, pairs) * stat.scale)

    def _load(self, images: np.ndarray) -> tuple[torch.Tensor, dict[int, int], np.ndarray]:
        """The round's distinct images on the device, where each sits in the batch, and which were readable."""
        prepared = self.prepared
        loader = make_loader(prepared.dataset, batch_size=len(images), num_workers=0, indices=images.tolist())
        chunks, ids = [], []
        dtype = model_dtype(prepared.model)
        for batch, labels, batch_ids in loader:
            chunks.append(batch.to(prepared.device, dtype=dtype))
            ids.append(batch_ids.numpy().astype(np.int64))
            for i, y in zip(batch_ids.tolist(), labels.tolist()):
                self.labels[int(i)] = int(y)
        found = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
        x = torch.cat(chunks) if chunks else torch.zeros(0)
        return x, {int(i): k for k, i in enumerate(found)}, found

    def _planned_shifts(self, images: np.ndarray, pairs: np.ndarray) -> dict[int, set[int]]:
        """Per image, the shifts this round's observations read (the adversarial walk asks for its own)."""
        wanted: dict[int, set[int]] = {}
        metrics = {t.metric for t in (s.threshold for s in self.stats)}
        for img, (a, b) in zip(images.tolist(), pairs.tolist()):
            need = wanted.setdefault(img, set())
            if "consistency" in metrics:
                need.update((a, b))
            if "accuracy" in metrics:
                need.add(self.shifts.zero_index)
            if self.needs_all:
                need.update(range(len(self.shifts)))
        return wanted

    def _forward(self, x: torch.Tensor, position: dict[int, int], wanted: dict[int, set[int]]) -> None:
        """Run every wanted (image, shift) pair not cached yet through the model, in device batches."""
        flat_img, flat_shift = [], []
        for img, shifts in wanted.items():
            todo = self.cache.missing(img, np.fromiter(shifts, dtype=np.int64))
            flat_img += [img] * len(todo)
            flat_shift += todo.tolist()
        if not flat_img:
            return
        prepared = self.prepared
        dev = prepared.device
        rows_img = torch.as_tensor([position[i] for i in flat_img], device=dev)
        rows_shift = torch.as_tensor(flat_shift, device=dev)
        labels = None
        if prepared.plan.labelled:
            labels = torch.as_tensor([self.labels[i] for i in flat_img], device=dev)
        bank = make_bank(x, self.shifts)

        def make_inputs(sl: slice) -> torch.Tensor:
            k = rows_shift[sl]
            return bank.gather(rows_img[sl], self.dh[k], self.dw[k])

        pred, p_lab, _, finite = prepared.forward.run(make_inputs, len(flat_img), labels)
        if not bool(finite.all()):
            raise Undecided("the model gave NaN or infinite outputs, which the exhaustive audit leaves out image by image")
        pred_np, plab_np = pred.cpu().numpy(), p_lab.cpu().numpy().astype(np.float64)
        for k, (img, s) in enumerate(zip(flat_img, flat_shift)):
            self.cache.row(img)[s] = pred_np[k]
            self.cache.p_label[img][s] = plab_np[k]
        self.rows += len(flat_img)

    def _adversarial_walk(self, x: torch.Tensor, position: dict[int, int], images: np.ndarray) -> None:
        """Each image's shifts in order of growing radius, in chunks, until its first mistake or the largest gated
        radius: an image that fails early costs few forwards."""
        active = [i for i in images.tolist() if self._first_wrong(i) is None and not self._walked(i)]
        step = 8
        while active:
            wanted = {}
            for img in active:
                done = int(np.argmax(self.cache.row(img)[: self.adv_count] < 0)) if not self._walked(img) else self.adv_count
                wanted[img] = set(range(done, min(self.adv_count, done + step)))
            self._forward(x, position, wanted)
            active = [i for i in active if self._first_wrong(i) is None and not self._walked(i)]
            step *= 2

    def _walked(self, img: int) -> bool:
        return bool((self.cache.row(img)[: self.adv_count] >= 0).all())

    def _first_wrong(self, img: int) -> int | None:
        """Index of the first evaluated, misclassified shift in radius order (None: none so far)."""
        pred = self.cache.row(img)[: self.adv_count]
        known = pred >= 0
        run = int(np.argmin(known)) if not known.all() else len(pred)  # the walk fills a prefix
        wrong = np.flatnonzero(pred[:run] != self.labels[img])
        return int(wrong[0]) if wrong.size else None

    def _observe(self, t: Any, images: np.ndarray, pairs: np.ndarray) -> np.ndarray:
        """This round's observations of threshold ``t``, one per drawn image."""
        out = np.empty(len(images), dtype=np.float64)
        for k, (img, (a, b)) in enumerate(zip(images.tolist(), pairs.tolist())):
            out[k] = _OBSERVE[t.metric](self, t, img, a, b)
        return out


def _consistency(gate: SequentialGate, t: Any, img: int, a: int, b: int) -> float:
    row = gate.cache.pred[img]
    if img in gate.complete:
        share = np.unique(row, return_counts=True)[1] / len(row)
        return float((share * share).sum())
    return float(row[a] == row[b])


def _accuracy(gate: SequentialGate, t: Any, img: int, a: int, b: int) -> float:
    return float(gate.cache.pred[img][gate.shifts.zero_index] == gate.labels[img])


def _adversarial(gate: SequentialGate, t: Any, img: int, a: int, b: int) -> float:
    first = gate._first_wrong(img)
    return float(first is None or gate.shifts.radius[first] > t.radius)


def _variation(gate: SequentialGate, t: Any, img: int, a: int, b: int) -> float:
    return float(min(0.5, gate.cache.p_label[img].std()))


_OBSERVE: dict[str, Callable[[SequentialGate, Any, int, int, int], float]] = {
    "consistency": _consistency,
    "accuracy": _accuracy,
    "adversarial": _adversarial,
    "variation": _variation,
}


@dataclass
class SequentialOutcome:
    """What the sequential gate found: each threshold's statistic, the forwards spent and the time taken."""

    stats: list[GateStatistic]
    rows: int
    exhaustive_rows: int
    draws: int
    images_seen: int
    seconds: float
    decision_error: float
    budget: float

    def to_json(self) -> dict[str, Any]:
        return {
            "decision_error": self.decision_error,
            "budget": self.budget,
            "draws": self.draws,
            "images_seen": self.images_seen,
            "forward_rows": self.rows,
            "forward_rows_exhaustive": self.exhaustive_rows,
            "statistics": [s.to_json() for s in self.stats],
        }


def run_sequential(prepared: PreparedAudit, progress: Any, decision_error: float, budget: float) -> SequentialOutcome:
    """Run the sequential gate; raises :class:`Undecided` when the exhaustive audit must decide."""
    gate = SequentialGate(prepared, decision_error, budget)
    t0 = time.perf_counter()
    if progress is not None:
        if hasattr(progress, "unit"):  # a progress that can say what it counts (the CLI's) counts forward passes
            progress.unit = "forward passes"
        progress.start(int(gate.budget_rows), "sequential gate")
    try:
        with torch.inference_mode():
            gate.run(progress)
    finally:
        if progress is not None:
            progress.stop()
    return SequentialOutcome(
        gate.stats,
        gate.rows,
        gate.exhaustive_rows,
        gate.draws,
        len(gate.cache.pred),
        time.perf_counter() - t0,
        decision_error,
        budget,
    )
