"""What every metric sees, and the accumulator protocol."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from shiftaudit.metrics.entries import Entry


@dataclass
class ShiftBatch:
    """Model outputs for a batch of B images, each at S evaluated shift *slots*.

    ``shift_index[b, s]`` is the index in the :class:`~shiftaudit.shifts.sets.ShiftSet` of the shift held in slot ``s``.
    In an exhaustive run slot ``s`` is shift ``s`` for every image; in a sampled run the slots are
    ``[zero, random, pair_1a, pair_1b, ..., pair_ka, pair_kb]``. ``random_slot`` and ``pair_slots`` say where the
    per-image random draws live, so the random-shift metrics are computed the same way in both modes.
    All arrays are numpy on the host.
    """

    image_ids: np.ndarray  # (B,) int64, the dataset index of each image
    labels: np.ndarray | None  # (B,) int64, None for unlabelled data
    preds: np.ndarray  # (B, S) int64 argmax class
    p_label: np.ndarray | None  # (B, S) float32 softmax probability of the true label
    p_top: np.ndarray  # (B, S) float32 top-1 softmax probability
    shift_index: np.ndarray  # (B, S) int64
    zero_slot: np.ndarray  # (B,) int64
    random_slot: np.ndarray  # (B,) int64
    pair_slots: np.ndarray  # (B, k, 2) int64
    exhaustive: bool
    num_shifts: int  # size of the shift set
    num_classes: int

    def __len__(self) -> int:
        return int(self.image_ids.shape[0])

    def at(self, array: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """Pick ``array[b, slots[b, ...]]`` for every image b."""
        rows = np.arange(len(self)).reshape((-1,) + (1,) * (slots.ndim - 1))
        return array[rows, slots]


Reduce = Literal["sum", "cat"]


@dataclass(frozen=True)
class MetricContext:
    """What an audit plan knows when it picks its metrics: the shift set, labels, and whether every shift is evaluated.

    ``notes`` collects the report notes of metrics left out (e.g. no flip rate on a grid without 1-px neighbours).
    """

    shift_set: Any  # a ShiftSet (not imported: the shift sets import the metrics' helpers)
    labelled: bool
    exhaustive: bool
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Reading:
    """One number a person reads off a metric's report entry: a table row, an HTML row, a compare row.

    ``percent``: a fraction shown as a percentage with ``digits`` decimals (changes in percentage points); otherwise a
    plain number. Readings of one metric with the same ``label`` and a ``part`` ("mean", "median") share one table
    row ("label, mean / median") and are separate compare rows ("label, mean"). ``radius``: a point of a curve; the
    table shows the headline radii only.
    """

    label: str
    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    percent: bool = True
    digits: int = 1
    ci_digits: int = 1
    part: str | None = None
    radius: int | float | None = None

    @property
    def name(self) -> str:
        return self.label if self.part is None else f"{self.label}, {self.part}"


class Metric(ABC):
    """An accumulator: ``update`` with batches, ``merge`` another accumulator of the same kind, ``compute`` a dict.

    What the rest of the package needs to know of a metric is declared here, so the engine, the report layout, the
    tables and the strategies iterate the registry (:mod:`shiftaudit.metrics.registry`) instead of naming metrics:
    ``report_key`` (where :meth:`compute` goes under the report's ``metrics``), ``entry_type`` (the type
    :meth:`compute` returns, an :class:`~shiftaudit.metrics.entries.Entry`: the report is written from it and read back
    into it; None: a JSON value kept as it is), ``per_image_column`` (the value kept per image, in ``per_image``) and
    ``per_image_type`` (its JSON type), ``needs_labels``/``needs_all_shifts``, ``compares_shifts`` (measures how an
    image's shifted copies differ: with the zero shift alone it would read perfect by definition, so a default audit of
    that set leaves it out), ``early_exit_safe`` (needs only the zero shift
    and each image's first misclassified shift), ``reported`` (False: read by the engine, never written),
    ``report_rank`` and ``display_order`` (position in the report and in the tables), :meth:`readings` (the numbers
    people read) and :meth:`default_for` (whether a default audit includes it). State is declared with
    :meth:`add_state` and a reduction, torchmetrics style, so merging (processes, resumed runs) and :meth:`reset` need
    no code of the metric's own.
    """

    name: ClassVar[str]
    report_key: ClassVar[tuple[str, ...] | None] = None  # None: (name,)
    report_rank: ClassVar[int] = 1000  # position in the report's metrics/per_image (ties: registration order)
    entry_type: ClassVar[type[Entry] | None] = None
    per_image_column: ClassVar[str | None] = None
    per_image_type: ClassVar[Any] = float | None
    needs_labels: ClassVar[bool] = True
    needs_all_shifts: ClassVar[bool] = False
    compares_shifts: ClassVar[bool] = False  # compares an image's shifted copies: left out of default audits of one shift
    early_exit_safe: ClassVar[bool] = False
    reported: ClassVar[bool] = True
    display_order: ClassVar[int] = 1000

    @abstractmethod
    def update(self, batch: ShiftBatch) -> None: ...

    @abstractmethod
    def compute(self) -> Any:
        """The report entry: an instance of ``entry_type`` (or, without one, a JSON value)."""

    @classmethod
    def key(cls) -> tuple[str, ...]:
        return cls.report_key or (cls.name,)

    @staticmethod
    def per_image_json(value: Any) -> Any:
        """One image's ``per_image_column`` value as JSON."""
        return float(value)

    @classmethod
    def default_for(cls, ctx: MetricContext) -> Metric | None:
        """The instance a default audit in ``ctx`` runs, or None (the default: only when asked for)."""
        return None

    @classmethod
    def readings(cls, entry: Any, settings: dict[str, Any]) -> list[Reading]:
        """The numbers of this metric's report entry that tables show; by default its ``value`` with its interval."""
        return value_readings(cls.name, entry)

    # -- state ---------------------------------------------------------------------------------------------------

    def add_state(self, name: str, default: np.ndarray, reduce: Reduce) -> None:
        """Declare an array of state: ``sum`` states add when merged, ``cat`` states concatenate."""
        specs = self.__dict__.setdefault("_state_specs", {})
        specs[name] = (np.array(default, copy=True), reduce)
        setattr(self, name, np.array(default, copy=True))

    def reductions(self) -> dict[str, Reduce]:
        return {name: reduce for name, (_, reduce) in self.__dict__.get("_state_specs", {}).items()}

    def state_dict(self) -> dict[str, np.ndarray]:
        """Plain arrays, one per declared state."""
        return {name: getattr(self, name) for name in self.reductions()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        for k, v in state.items():
            setattr(self, k, np.asarray(v))

    def reset(self) -> None:
        """Back to the state before any update."""
        for name, (default, _) in self.__dict__.get("_state_specs", {}).items():
            setattr(self, name, np.array(default, copy=True))

    def merge(self, other: Metric) -> None:
        """Fold ``other``'s state into this one (same class), by each state's declared reduction."""
        if type(other) is not type(self):
            raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        self.load_state_dict(reduce_states(self.reductions(), [self.state_dict(), other.state_dict()]))


def value_readings(name: str, entry: Mapping[str, Any]) -> list[Reading]:
    """A report entry's ``value`` (with its interval, if any) as a plain number labelled by the metric's name."""
    if "value" not in entry:
        return []
    return [
        Reading(
            name.replace("_", " "),
            entry["value"],
            entry.get("ci_low"),
            entry.get("ci_high"),
            percent=False,
            digits=4,
            ci_digits=4,
        )
    ]


def reduce_states(reductions: dict[str, Reduce], states: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Several accumulators' states as one: sums add, per-image arrays concatenate (in the order given)."""
    out = {}
    for key, how in reductions.items():
        arrays = [np.asarray(s[key]) for s in states]
        out[key] = sum(arrays[1:], arrays[0]) if how == "sum" else np.concatenate(arrays)
    return out


class PerImageMetric(Metric):
    """Keeps one value per image, keyed by image id, so merged and resumed runs sort back into dataset order.

    Batches are kept as chunks and joined once when read: an all-shift run updates with one image at a time, and
    growing one array per update would copy the whole history every batch (quadratic in the number of images).
    """

    value_dtype: Any = np.float64  # AdversarialCurve keeps exact integer radii

    def __init__(self) -> None:
        self._ids: list[np.ndarray] = []
        self._values: list[np.ndarray] = []

    @property
    def ids(self) -> np.ndarray:
        return self._joined("_ids", np.int64)

    @ids.setter
    def ids(self, value: np.ndarray) -> None:
        self._ids = [np.asarray(value, dtype=np.int64)]

    @property
    def values(self) -> np.ndarray:
        return self._joined("_values", self.value_dtype)

    @values.setter
    def values(self, value: np.ndarray) -> None:
        self._values = [np.asarray(value, dtype=self.value_dtype)]

    def _joined(self, attr: str, dtype: Any) -> np.ndarray:
        chunks = getattr(self, attr)
        if len(chunks) != 1:
            chunks[:] = [np.concatenate(chunks).astype(dtype, copy=False) if chunks else np.zeros(0, dtype=dtype)]
        return chunks[0]

    def _append(self, ids: np.ndarray, values: np.ndarray) -> None:
        self._ids.append(ids.astype(np.int64))
        self._values.append(values.astype(self.value_dtype))

    def sorted_values(self) -> tuple[np.ndarray, np.ndarray]:
        ids, values = self.ids, self.values
        order = np.argsort(ids, kind="stable")
        return ids[order], values[order]

    def reductions(self) -> dict[str, Reduce]:
        return {"ids": "cat", "values": "cat"}

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"ids": self.ids, "values": self.values}

    def reset(self) -> None:
        self._ids, self._values = [], []
