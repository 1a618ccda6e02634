"""Model outputs already computed, per (image, shift): what the sequential gate ran, for the full audit to reuse.

The sequential gate (:mod:`shiftaudit.engine.sequential`) stores each (image, shift) pair it runs through the model:
the prediction, P(label) and the top-1 probability, the three numbers a :class:`~shiftaudit.metrics.ShiftBatch`
holds per pair. When it cannot decide and the full audit runs, the full audit looks every planned pair up here
first and runs only the pairs not found (:mod:`shiftaudit.engine.passes`), so no pair goes through the model twice.
Images are keyed by their index in the dataset, shifts by their index in the shift set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class CachedRows:
    """The cached outputs at some (image, shift) slots: ``hit`` says which slots were found; the other arrays hold
    their values there (-1 and 0 elsewhere)."""

    hit: np.ndarray  # bool
    pred: np.ndarray  # int64
    p_label: np.ndarray  # float32
    p_top: np.ndarray  # float32


@dataclass
class PredictionCache:
    """Outputs per (image, shift) already computed; a prediction of -1 marks a pair not run yet."""

    num_shifts: int
    pred: dict[int, np.ndarray] = field(default_factory=dict)
    p_label: dict[int, np.ndarray] = field(default_factory=dict)
    p_top: dict[int, np.ndarray] = field(default_factory=dict)
    held: int = 0  # pairs stored
    reused: int = 0  # pairs the full audit took from here instead of running them

    def row(self, image: int) -> np.ndarray:
        """The image's predictions at every shift of the set (-1: not run), made on first use."""
        if image not in self.pred:
            self.pred[image] = np.full(self.num_shifts, -1, dtype=np.int64)
            self.p_label[image] = np.zeros(self.num_shifts, dtype=np.float32)
            self.p_top[image] = np.zeros(self.num_shifts, dtype=np.float32)
        return self.pred[image]

    def missing(self, image: int, shifts: np.ndarray) -> np.ndarray:
        """Which of ``shifts`` the image has not been run at yet (sorted, each once)."""
        return np.unique(shifts[self.row(image)[shifts] < 0])

    def complete(self, image: int) -> bool:
        """Whether the image was run at every shift of the set."""
        return image in self.pred and bool((self.pred[image] >= 0).all())

    def store(self, images: list[int], shifts: list[int], pred: np.ndarray, p_label: np.ndarray, p_top: np.ndarray) -> None:
        """Keep the outputs of pairs just run (``images[k]`` at ``shifts[k]``)."""
        for k, (img, s) in enumerate(zip(images, shifts)):
            row = self.row(img)
            self.held += int(row[s] < 0)
            row[s] = pred[k]
            self.p_label[img][s] = p_label[k]
            self.p_top[img][s] = p_top[k]

    def lookup(self, image_ids: np.ndarray, shift_index: np.ndarray) -> CachedRows:
        """The cached outputs of image ``image_ids[b]`` at shift ``shift_index[b, s]`` (a ``(B, S)`` layout); the
        slots found are counted as reused."""
        shape = shift_index.shape
        out = CachedRows(
            np.zeros(shape, dtype=bool),
            np.full(shape, -1, dtype=np.int64),
            np.zeros(shape, dtype=np.float32),
            np.zeros(shape, dtype=np.float32),
        )
        for b, img in enumerate(image_ids.tolist()):
            if img not in self.pred:
                continue
            cols = shift_index[b]
            pred = self.pred[img][cols]
            out.hit[b] = pred >= 0
            out.pred[b] = pred
            out.p_label[b] = self.p_label[img][cols]
            out.p_top[b] = self.p_top[img][cols]
        self.reused += int(out.hit.sum())
        return out
