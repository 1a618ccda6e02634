"""The sequential gate: stop drawing as soon as every threshold is clearly met or clearly missed.

A CI gate asks "is exact consistency >= 0.95?", not for the value to four digits. Every gated number is the mean over
the data's images of a per-image quantity, so uniform random draws estimate it without bias:

- exact consistency: an image and two independent uniform shifts of the set; 1 when the two predictions agree
  (the expectation is ``sum_c p_c^2`` per image, the exact estimator's own definition); for an image whose every
  shift is already cached, that expectation itself (same mean, less variance);
- accuracy without shift: an image; 1 when its zero-shift prediction is right;
- adversarial accuracy at radius r: an image; 1 when it is right at every shift of radius <= r (walked in order of
  growing radius, stopping at the first mistake; the walk order is the set's :attr:`~ShiftSet.radius_order`, so the
  set may list its shifts in any order);
- variation: an image; twice the standard deviation of P(label) over every shift (in [0, 1]).

Draws come in rounds from a seeded stream (:mod:`shiftaudit.rng`), one observation per threshold per drawn image, and
feed an anytime-valid betting confidence sequence per threshold (:mod:`shiftaudit.engine.betting`) at level
``decision_error / thresholds``. A threshold is decided when its interval lies wholly on one side; so the chance that
any verdict differs from the full audit's is at most ``decision_error``.

The values already known narrow that interval with certainty (a finite population): with ``K`` of the ``D`` images'
values known, summing to ``S``, the mean lies in ``[S / D, (S + D - K) / D]`` whatever the others are, so the
interval is cut to that range, which closes as coverage grows. Once every image's value is known, the value is
exact: it is computed by the full audit's own metric from the cached predictions, and the threshold is decided on it
as the full audit would (a value at its threshold passes), never on the sampled estimate.

Predictions are cached per (image, shift) (:mod:`shiftaudit.engine.cache`): an image drawn twice costs nothing the
second time, so the gate can never spend more than the full audit. It never spends more than ``budget`` of the full
audit's forward passes: a round is cut where the budget runs out, mid-round if need be. Undecided then (a value
within noise of a threshold), it raises :class:`Undecided` with its cache, and the full audit runs, reusing every
cached prediction: an exhaustive audit that falls back costs its own forward passes and no more.
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
from shiftaudit.engine.cache import PredictionCache
from shiftaudit.engine.forward import model_dtype
from shiftaudit.engine.plan import PreparedAudit
from shiftaudit.metrics import AccuracyAtZeroShift, AdversarialCurve, ExactConsistency, ShiftBatch, Variation
from shiftaudit.rng import STREAM_SEQUENTIAL_IMAGE, STREAM_SEQUENTIAL_SHIFTS, uniform_integers
from shiftaudit.shifts.modes import make_bank

FIRST_ROUND = 32  # images drawn in the first round; later rounds grow by half, so the looks are geometric
MAX_ROUND = 4096
DRAWS_PER_IMAGE = 64  # past this many draws per image every observation repeats cached ones: the full audit decides
SLACK = 1e-9  # the known-values bounds are widened by this, so float rounding of their sums never cuts the true mean
EXACT_CHUNK = 1024  # images per batch when the exact value is computed from the cache


class Undecided(Exception):
    """The sequential gate stops without a verdict; the full audit decides (the message says why). ``cache`` holds
    every prediction the gate made, for the full audit to reuse; ``rows`` how many forward passes it spent."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.cache: PredictionCache | None = None
        self.rows = 0


@dataclass
class GateStatistic:
    """One threshold's stream of observations (each drawn image's value, scaled into [0, 1]), the values known for
    certain, and the exact value once every image's is known."""

    threshold: Any
    sequence: BettingSequence
    scale: float = 1.0  # observation = value * scale (variation: the std of a probability is at most 1/2)
    known: dict[int, float] = field(default_factory=dict)  # image -> its value (scaled), for images whose value is known
    known_sum: float = 0.0
    population: int = 0  # images that may be in the audited data: all but those found unreadable (0: not counted yet)
    exact: float | None = None  # the full audit's value (unscaled), once every image's value is known

    def learn(self, image: int, value: float) -> None:
        if image not in self.known:
            self.known[image] = value
            self.known_sum += value

    @property
    def known_range(self) -> tuple[float, float]:
        """Where the mean (scaled) lies for certain, given the values known: the unknown ones anywhere in [0, 1]."""
        if not self.population:
            return 0.0, 1.0
        unknown = self.population - len(self.known)
        low = self.known_sum / self.population - SLACK
        high = (self.known_sum + unknown) / self.population + SLACK
        return max(0.0, low), min(1.0, high)

    @property
    def interval(self) -> tuple[float, float]:
        """The confidence sequence cut to the known range (scaled). Should the sequence miss the range altogether
        (its alpha-probability failure), the range alone, which holds for certain."""
        k_low, k_high = self.known_range
        low, high = max(self.sequence.low, k_low), min(self.sequence.high, k_high)
        return (k_low, k_high) if low > high else (low, high)

    @property
    def decision(self) -> bool | None:
        """True: the threshold holds; False: it fails; None: not decided yet."""
        t = self.threshold
        if self.exact is not None:  # as the full audit judges its value: exactly at the threshold passes
            return self.exact >= t.value if t.bound == "min" else self.exact <= t.value
        v = t.value * self.scale
        low, high = self.interval
        if t.bound == "min":
            return True if low > v else False if high < v else None
        return True if high < v else False if low > v else None

    def to_json(self) -> dict[str, Any]:
        s = self.sequence
        low, high = self.interval
        estimate = min(max(s.mean, self.known_range[0]), self.known_range[1]) if s.count else s.mean
        out = {
            "metric": self.threshold.metric,
            "radius": self.threshold.radius,
            "estimate": estimate / self.scale,
            "ci_low": low / self.scale,
            "ci_high": high / self.scale,
            "confidence": 1.0 - s.alpha,
            "draws": s.count,
            "decision": {True: "pass", False: "fail", None: "undecided"}[self.decision],
        }
        if self.exact is not None:
            out.update(estimate=self.exact, ci_low=self.exact, ci_high=self.exact, confidence=1.0, exact=True)
        return out


class SequentialGate:
    """Draws rounds of images, runs the (image, shift) pairs not cached yet, feeds each threshold's sequence."""

    def __init__(self, prepared: PreparedAudit, decision_error: float, budget: float) -> None:
        self.prepared = prepared
        plan = prepared.plan
        self.shifts = plan.shifts
        self.order = self.shifts.radius_order  # draws and the walk index the set through this: any listed order
        self.zero = self.shifts.zero_index
        self.num_images = len(prepared.dataset)
        thresholds = list(prepared.config.thresholds)
        alpha = decision_error / len(thresholds)  # Bonferroni over the checks: the whole verdict errs <= decision_error
        self.stats = [GateStatistic(t, BettingSequence(alpha), 2.0 if t.metric == "variation" else 1.0) for t in thresholds]
        self.cache = PredictionCache(len(self.shifts))
        self.labels: dict[int, int] = {}  # readable images drawn so far, with their labels (-1: unlabelled)
        self.unreadable: set[int] = set()
        self.full_rows = self.num_images * plan.slots_per_image  # what the planned full audit runs
        self.budget_rows = int(budget * self.full_rows)  # whole forward passes: never over the budget's share
        self.rows = 0
        self.draws = 0
        self.complete: set[int] = set()
        radii = [t.radius for t in thresholds if t.metric == "adversarial"]
        adv_count = int(np.searchsorted(self.shifts.radius[self.order], max(radii), side="right")) if radii else 0
        self.walk = self.order[:adv_count]  # the shifts an adversarial observation needs, in order of growing radius
        self.needs_all = any(t.metric == "variation" for t in thresholds)
        off_dtype = torch.float64 if self.shifts.fractional else torch.long
        self.dh = torch.as_tensor(self.shifts.dh, dtype=off_dtype, device=prepared.device)
        self.dw = torch.as_tensor(self.shifts.dw, dtype=off_dtype, device=prepared.device)

    @property
    def decided(self) -> bool:
        return all(s.decision is not None for s in self.stats)

    def run(self, progress: Any) -> None:
        """Rounds until every threshold is decided; raises :class:`Undecided` at the budget or the draw cap."""
        size = FIRST_ROUND
        while not self.decided:
            if self.rows >= self.budget_rows or self.draws >= DRAWS_PER_IMAGE * self.num_images:
                raise self._undecided()
            before = self.rows
            try:
                self._round(size)
            finally:
                if progress is not None:
                    progress.advance(self.rows - before)
            size = min(MAX_ROUND, size + size // 2)

    def _undecided(self) -> Undecided:
        return Undecided(
            f"undecided after {self.rows:,} forward passes ({100 * self.rows / self.full_rows:.0f} % of "
            "the full audit's): a value within noise of its threshold"
        )

    def _round(self, size: int) -> None:
        draw_ids = np.arange(self.draws, self.draws + size, dtype=np.int64)
        self.draws += size
        images = uniform_integers(self.prepared.config.seed, STREAM_SEQUENTIAL_IMAGE, draw_ids, 1, self.num_images)[:, 0]
        drawn = uniform_integers(self.prepared.config.seed, STREAM_SEQUENTIAL_SHIFTS, draw_ids, 2, len(self.shifts))
        pairs = self.order[drawn]  # a draw of the k-th shift in radius order: the same shift however the set is listed
        # images whose every shift was already run before this round: their consistency observation is the exact
        # per-image value sum_c p_c^2 (the draw's expectation given the image; decided before the round's forwards, so
        # the choice cannot lean on this round's outcomes)
        self.complete = {i for i in np.unique(images).tolist() if self.cache.complete(i)}
        wanted = self._planned_shifts(images, pairs)
        x, position = self._load(wanted)
        keep = np.isin(images, np.fromiter(self.labels, dtype=np.int64, count=len(self.labels)))
        if not keep.any():
            raise Undecided("drew no readable image in a round")
        images, pairs = images[keep], pairs[keep]  # an unreadable image is not part of the audited data: its draw is void
        self._forward(x, position, {i: wanted[i] for i in position})
        if self.walk.size:
            self._adversarial_walk(x, position, np.unique(images))
        for stat in self.stats:
            stat.sequence.extend(self._observe(stat.threshold, images, pairs) * stat.scale)
        self._learn(np.unique(images))

    def _planned_shifts(self, images: np.ndarray, pairs: np.ndarray) -> dict[int, set[int]]:
        """Per drawn image, the shifts this round's observations read (the adversarial walk asks for its own)."""
        wanted: dict[int, set[int]] = {}
        metrics = {t.metric for t in (s.threshold for s in self.stats)}
        for img, (a, b) in zip(images.tolist(), pairs.tolist()):
            need = wanted.setdefault(img, set())
            if "consistency" in metrics:
                need.update((a, b))
            if "accuracy" in metrics:
                need.add(self.zero)
            if self.needs_all:
                need.update(range(len(self.shifts)))
        return wanted

    def _load(self, wanted: dict[int, set[int]]) -> tuple[torch.Tensor, dict[int, int]]:
        """The drawn images that need a forward pass (or were never read), on the device, and where each sits in the
        batch; records each new image's label, or that it is unreadable."""
        need = [
            i
            for i, shifts in wanted.items()
            if i not in self.unreadable
            and (i not in self.labels or self.cache.missing(i, np.fromiter(shifts, np.int64)).size or self._walks(i))
        ]
        if not need:
            return torch.zeros(0), {}
        prepared = self.prepared
        loader = make_loader(prepared.dataset, batch_size=len(need), num_workers=0, indices=sorted(need))
        chunks, ids = [], []
        dtype = model_dtype(prepared.model)
        for batch, labels, batch_ids in loader:
            chunks.append(batch.to(prepared.device, dtype=dtype))
            ids.append(batch_ids.numpy().astype(np.int64))
            for i, y in zip(batch_ids.tolist(), labels.tolist()):
                self.labels[int(i)] = int(y)
        found = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
        self.unreadable.update(set(need) - set(found.tolist()))
        x = torch.cat(chunks) if chunks else torch.zeros(0)
        return x, {int(i): k for k, i in enumerate(found)}

    def _forward(self, x: torch.Tensor, position: dict[int, int], wanted: dict[int, set[int]]) -> None:
        """Run every wanted (image, shift) pair not cached yet through the model, in device batches; at the budget,
        only the pairs it still allows, then :class:`Undecided`."""
        flat_img, flat_shift = [], []
        for img, shifts in wanted.items():
            todo = self.cache.missing(img, np.fromiter(shifts, dtype=np.int64))
            flat_img += [img] * len(todo)
            flat_shift += todo.tolist()
        over = len(flat_img) > self.budget_rows - self.rows
        if over:
            flat_img, flat_shift = flat_img[: self.budget_rows - self.rows], flat_shift[: self.budget_rows - self.rows]
        if flat_img:
            self._run_pairs(x, position, flat_img, flat_shift)
        if over:
            raise self._undecided()

    def _run_pairs(self, x: torch.Tensor, position: dict[int, int], flat_img: list[int], flat_shift: list[int]) -> None:
        """The pairs through the model; their outputs into the cache."""
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

        pred, p_lab, p_top, finite = (t.cpu().numpy() for t in prepared.forward.run(make_inputs, len(flat_img), labels))
        self.rows += len(flat_img)
        ok = np.flatnonzero(finite)
        keep_img, keep_shift = [flat_img[k] for k in ok], [flat_shift[k] for k in ok]
        self.cache.store(keep_img, keep_shift, pred[ok], p_lab[ok].astype(np.float32), p_top[ok].astype(np.float32))
        if ok.size < len(flat_img):
            raise Undecided("the model gave NaN or infinite outputs, which the full audit leaves out image by image")

    def _walks(self, img: int) -> bool:
        """Whether the adversarial walk has yet to reach the image's first mistake or the end of its walk."""
        return bool(self.walk.size) and self._first_failure(img) is None and not self._walked(img)

    def _adversarial_walk(self, x: torch.Tensor, position: dict[int, int], images: np.ndarray) -> None:
        """Each image's shifts in order of growing radius, in chunks, until its first mistake or the largest gated
        radius: an image that fails early costs few forwards."""
        active = [i for i in images.tolist() if self._walks(i)]
        step = 8
        while active:
            wanted = {}
            for img in active:
                known = self.cache.row(img)[self.walk] >= 0
                done = int(np.argmin(known))  # the walk's first shift not run yet (the image still walks: one exists)
                wanted[img] = set(self.walk[done : done + step].tolist())
            self._forward(x, position, wanted)
            active = [i for i in active if self._walks(i)]
            step *= 2

    def _walked(self, img: int) -> bool:
        return bool((self.cache.row(img)[self.walk] >= 0).all())

    def _first_failure(self, img: int) -> float | None:
        """The radius of the image's first misclassified shift in walk order, among the shifts run so far in an
        unbroken prefix of the walk (None: none so far)."""
        pred = self.cache.row(img)[self.walk]
        known = pred >= 0
        run = int(np.argmin(known)) if not known.all() else len(pred)
        wrong = np.flatnonzero(pred[:run] != self.labels[img])
        return float(self.shifts.radius[self.walk[wrong[0]]]) if wrong.size else None

    def _observe(self, t: Any, images: np.ndarray, pairs: np.ndarray) -> np.ndarray:
        """This round's observations of threshold ``t``, one per drawn image."""
        out = np.empty(len(images), dtype=np.float64)
        for k, (img, (a, b)) in enumerate(zip(images.tolist(), pairs.tolist())):
            out[k] = _OBSERVE[t.metric](self, t, img, a, b)
        return out

    def _learn(self, images: np.ndarray) -> None:
        """The values now known for certain, and each statistic's exact value once every image's is known."""
        population = self.num_images - len(self.unreadable)
        for stat in self.stats:
            stat.population = population
            known = _KNOWN[stat.threshold.metric]
            for img in images.tolist():
                if img in self.labels and img not in stat.known and known(self, img):
                    stat.learn(img, _value(self, stat.threshold, img) * stat.scale)
            if stat.exact is None and len(stat.known) == population:
                stat.exact = exact_value(self, stat.threshold, sorted(stat.known))


def _consistency(gate: SequentialGate, t: Any, img: int, a: int, b: int) -> float:
    row = gate.cache.pred[img]
    if img in gate.complete:
        return _consistency_value(row)
    return float(row[a] == row[b])


def _consistency_value(row: np.ndarray) -> float:
    share = np.unique(row, return_counts=True)[1] / len(row)
    return float((share * share).sum())


def _accuracy(gate: SequentialGate, t: Any, img: int, a: int, b: int) -> float:
    return float(gate.cache.pred[img][gate.zero] == gate.labels[img])


def _adversarial(gate: SequentialGate, t: Any, img: int, a: int, b: int) -> float:
    first = gate._first_failure(img)
    return float(first is None or first > t.radius)


def _variation(gate: SequentialGate, t: Any, img: int, a: int, b: int) -> float:
    return float(min(0.5, gate.cache.p_label[img].astype(np.float64).std()))


_OBSERVE: dict[str, Callable[[SequentialGate, Any, int, int, int], float]] = {
    "consistency": _consistency,
    "accuracy": _accuracy,
    "adversarial": _adversarial,
    "variation": _variation,
}

_KNOWN: dict[str, Callable[[SequentialGate, int], bool]] = {
    "consistency": lambda gate, img: gate.cache.complete(img),
    "accuracy": lambda gate, img: bool(gate.cache.row(img)[gate.zero] >= 0),
    "adversarial": lambda gate, img: not gate._walks(img),
    "variation": lambda gate, img: gate.cache.complete(img),
}


def _value(gate: SequentialGate, t: Any, img: int) -> float:
    """The image's own value of ``t``'s metric (its value is known: see ``_KNOWN``)."""
    if t.metric == "consistency":
        return _consistency_value(gate.cache.pred[img])
    return _OBSERVE[t.metric](gate, t, img, gate.zero, gate.zero)


def exact_value(gate: SequentialGate, t: Any, images: list[int]) -> float:
    """The full audit's value of ``t``'s metric over ``images`` (every readable image), computed by the full audit's
    own metric from the cached predictions, so that it equals the full audit's to the last bit. The cached rows are
    handed over in shift-set order, as the full audit's batches hold them; a shift an image was not run at (never
    one its value depends on) is filled with the label, i.e. as correct."""
    shifts = gate.shifts
    metric = {
        "accuracy": AccuracyAtZeroShift,
        "consistency": ExactConsistency,
        "variation": Variation,
        "adversarial": lambda: AdversarialCurve(shifts),
    }[t.metric]()
    for start in range(0, len(images), EXACT_CHUNK):
        ids = np.asarray(images[start : start + EXACT_CHUNK], dtype=np.int64)
        labels = np.asarray([gate.labels[i] for i in ids.tolist()], dtype=np.int64)
        preds = np.stack([gate.cache.pred[i] for i in ids.tolist()])
        preds = np.where(preds >= 0, preds, labels[:, None])
        metric.update(
            ShiftBatch(
                image_ids=ids,
                labels=labels if gate.prepared.plan.labelled else None,
                preds=preds,
                p_label=np.stack([gate.cache.p_label[i] for i in ids.tolist()]),
                p_top=np.stack([gate.cache.p_top[i] for i in ids.tolist()]),
                shift_index=np.tile(np.arange(len(shifts)), (ids.size, 1)),
                zero_slot=np.full(ids.size, gate.zero),
                random_slot=np.full(ids.size, gate.zero),
                pair_slots=np.zeros((ids.size, 1, 2), dtype=np.int64),
                exhaustive=True,
                num_shifts=len(shifts),
                num_classes=gate.prepared.forward.num_classes,
            )
        )
    entry = metric.compute()
    if t.metric == "adversarial":
        return float(entry.accuracy[entry.radius.index(t.radius)])
    return float(entry.mean if t.metric == "variation" else entry.value)


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
    """Run the sequential gate; raises :class:`Undecided`, with the gate's cache, when the full audit must decide."""
    gate = SequentialGate(prepared, decision_error, budget)
    t0 = time.perf_counter()
    unit = getattr(progress, "unit", None)
    if progress is not None:
        if unit is not None:  # a progress that can say what it counts (the CLI's) counts forward passes here
            progress.unit = "forward passes"
        progress.start(gate.budget_rows, "sequential gate")
    try:
        with torch.inference_mode():
            gate.run(progress)
    except Undecided as exc:
        exc.cache, exc.rows = gate.cache, gate.rows
        raise
    finally:
        if progress is not None:
            progress.stop()
            if unit is not None:  # ... and what it counted before (images, for the full audit that may follow)
                progress.unit = unit
    return SequentialOutcome(
        gate.stats,
        gate.rows,
        gate.full_rows,
        gate.draws,
        len(gate.labels),
        time.perf_counter() - t0,
        decision_error,
        budget,
    )
