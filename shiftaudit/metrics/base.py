"""What every metric sees, and the accumulator protocol."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np


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


class Metric(ABC):
    """An accumulator: ``update`` with batches, ``merge`` another accumulator of the same kind, ``compute`` a dict."""

    name: ClassVar[str]
    needs_labels: ClassVar[bool] = True
    needs_all_shifts: ClassVar[bool] = False
    reported: ClassVar[bool] = True  # False: used by the engine (e.g. for a warning), never written to the report

    @abstractmethod
    def update(self, batch: ShiftBatch) -> None: ...

    @abstractmethod
    def compute(self) -> dict[str, Any]: ...

    def merge(self, other: Metric) -> None:
        """Fold ``other``'s state into this one (same class): per-image arrays concatenate, sums add."""
        if type(other) is not type(self):
            raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        mine, theirs = self.state_dict(), other.state_dict()
        merged = {}
        for key, value in mine.items():
            if key.startswith("sum_"):
                merged[key] = value + theirs[key]
            else:
                merged[key] = np.concatenate([value, theirs[key]])
        self.load_state_dict(merged)

    @abstractmethod
    def state_dict(self) -> dict[str, np.ndarray]:
        """Plain arrays: per-image arrays (concatenated when merged) and ``sum_*`` arrays (added when merged)."""

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        for k, v in state.items():
            setattr(self, k, np.asarray(v))


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

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"ids": self.ids, "values": self.values}
