"""Shift sets and batched circular shifts (the paper's Eq. 4).

``Shift_{dh,dw}(X)[c, h, w] = X[c, (h - dh) mod H, (w - dw) mod W]`` is ``torch.roll(X, (dh, dw), (-2, -1))``.
Two offsets equal modulo the image size are the same shift, so every shift is stored once, under its canonical
signed offset (in ``(-H/2, H/2]``), and its *radius* is the Chebyshev distance on the torus: the smallest ``r``
such that the shift lies in the window ``[-r, r]^2``. The set is ordered by growing radius, zero shift first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .errors import UsageError


def canonical_offset(d: np.ndarray | int, n: int) -> np.ndarray:
    """Signed representative of ``d mod n`` in ``(-n/2, n/2]``."""
    m = np.mod(np.asarray(d, dtype=np.int64), n)
    return np.where(m > n // 2, m - n, m)


def cyclic_radius(d: np.ndarray | int, n: int) -> np.ndarray:
    """Smallest |offset| among the representatives of ``d mod n``."""
    m = np.mod(np.asarray(d, dtype=np.int64), n)
    return np.minimum(m, n - m)


@dataclass(frozen=True)
class ShiftSet:
    """An ordered set of distinct circular shifts of an ``height x width`` input."""

    height: int
    width: int
    dh: np.ndarray
    dw: np.ndarray
    kind: str
    max_shift: int
    step: int
    radius: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        r = np.maximum(cyclic_radius(self.dh, self.height), cyclic_radius(self.dw, self.width))
        object.__setattr__(self, "radius", r.astype(np.int64))

    # -- construction -------------------------------------------------------------------------------------------
    @classmethod
    def window(cls, size: tuple[int, int], max_shift: int, step: int = 1) -> ShiftSet:
        """Every shift in ``[-max_shift, max_shift]^2`` whose offsets are multiples of ``step``, deduplicated modulo the size."""
        h, w = int(size[0]), int(size[1])
        if max_shift < 0:
            raise UsageError(f"--max-shift must be >= 0, got {max_shift}.")
        if step < 1:
            raise UsageError(f"--shift-step must be >= 1, got {step}.")
        if max_shift > 0 and step > max_shift:
            raise UsageError(f"--shift-step {step} is larger than --max-shift {max_shift}: only the zero shift would remain.")
        if 2 * max_shift + 1 > 2 * max(h, w) + 1 and max_shift > max(h, w):
            raise UsageError(f"--max-shift {max_shift} exceeds the image size {h}x{w}.")
        offs = np.arange(-max_shift, max_shift + 1, dtype=np.int64)
        offs = offs[offs % step == 0]
        hh = np.unique(canonical_offset(offs, h))
        ww = np.unique(canonical_offset(offs, w))
        gh, gw = np.meshgrid(hh, ww, indexing="ij")
        covers_all = len(hh) == h and len(ww) == w
        kind = "all" if covers_all else ("grid" if step > 1 else "window")
        return cls._ordered(h, w, gh.ravel(), gw.ravel(), kind, max_shift, step)

    @classmethod
    def all_shifts(cls, size: tuple[int, int]) -> ShiftSet:
        """All ``H x W`` circular shifts."""
        h, w = int(size[0]), int(size[1])
        return cls.window((h, w), max(h, w) // 2, 1)

    @classmethod
    def from_offsets(cls, size: tuple[int, int], offsets: list[tuple[int, int]], kind: str = "custom") -> ShiftSet:
        h, w = int(size[0]), int(size[1])
        arr = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
        pairs = np.unique(np.stack([canonical_offset(arr[:, 0], h), canonical_offset(arr[:, 1], w)], 1), axis=0)
        if not ((pairs[:, 0] == 0) & (pairs[:, 1] == 0)).any():
            pairs = np.concatenate([[[0, 0]], pairs])
        r = int(np.max(np.maximum(cyclic_radius(pairs[:, 0], h), cyclic_radius(pairs[:, 1], w))))
        return cls._ordered(h, w, pairs[:, 0], pairs[:, 1], kind, r, 1)

    @classmethod
    def _ordered(cls, h: int, w: int, dh: np.ndarray, dw: np.ndarray, kind: str, max_shift: int, step: int) -> ShiftSet:
        radius = np.maximum(cyclic_radius(dh, h), cyclic_radius(dw, w))
        order = np.lexsort((dw, dh, radius))
        return cls(h, w, dh[order].copy(), dw[order].copy(), kind, int(max_shift), int(step))

    # -- queries ------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.dh.shape[0])

    @property
    def zero_index(self) -> int:
        return 0  # ordered by radius: the zero shift comes first

    @property
    def radii(self) -> list[int]:
        """The radii of the adversarial curve: 0 .. the largest radius present."""
        return list(range(int(self.radius.max()) + 1)) if len(self) else [0]

    def describe(self) -> str:
        if self.kind == "all":
            return f"all {len(self)} circular shifts of {self.height}x{self.width}"
        step = f", step {self.step}" if self.step > 1 else ""
        return f"{len(self)} circular shifts in [-{self.max_shift}, {self.max_shift}]^2{step}"

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": "circular",
            "kind": self.kind,
            "image_size": [self.height, self.width],
            "max_shift": self.max_shift,
            "step": self.step,
            "count": len(self),
        }


def default_shift_set(size: tuple[int, int], max_shift: int | None = None, step: int | None = None) -> ShiftSet:
    """The default keeps every audit affordable.

    Small images (<= 64 px): every shift in the window of half the image size, i.e. all H x W shifts, the paper's
    CIFAR protocol. Larger images: a max shift of 16 px on a grid of step 4 (81 shifts), which still draws the
    adversarial curve at r = 0, 4, 8, 12, 16 at 224x224.
    """
    h, w = size
    small = max(h, w) <= 64
    if max_shift is None:
        max_shift = max(h, w) // 2 if small else 16
    if step is None:
        step = 1 if (small or max_shift <= 4) else max(1, min(4, max_shift // 4))
    return ShiftSet.window(size, max_shift, step)


class ShiftBank:
    """All circular shifts of a batch of images, as a zero-copy view; gathers arbitrary (image, shift) pairs.

    Tiling the image 2x2 makes every circular shift a contiguous window of the tiled image, so
    ``Shift_{dh,dw}(X)`` is the window at offset ``((-dh) mod H, (-dw) mod W)`` of ``unfold``'s view. One
    advanced-indexing gather then builds any list of shifted copies straight into a ``(n, C, H, W)`` batch on
    the device, without a Python loop over shifts.
    """

    def __init__(self, images: torch.Tensor) -> None:
        if images.ndim != 4:
            raise ValueError(f"expected (B, C, H, W) images, got shape {tuple(images.shape)}")
        self.images = images
        b, c, h, w = images.shape
        self.height, self.width = h, w
        tiled = images.repeat(1, 1, 2, 2)
        self._windows = tiled.unfold(2, h, 1).unfold(3, w, 1)  # (B, C, H+1, W+1, H, W) view

    def gather(self, image_index: torch.Tensor, dh: torch.Tensor, dw: torch.Tensor) -> torch.Tensor:
        """Shifted copies: ``out[i] = roll(images[image_index[i]], (dh[i], dw[i]))``; all three are (n,) int64."""
        oh = torch.remainder(-dh, self.height)
        ow = torch.remainder(-dw, self.width)
        out = self._windows[image_index, :, oh, ow]
        return out.contiguous()


def roll_batch(images: torch.Tensor, dh: torch.Tensor, dw: torch.Tensor) -> torch.Tensor:
    """Every image at every shift: ``(B, C, H, W)`` and shared ``(K,)`` offsets, or per-image ``(B, K)`` offsets,
    -> ``(B, K, C, H, W)``."""
    b = images.shape[0]
    dh = torch.as_tensor(dh, dtype=torch.long, device=images.device)
    dw = torch.as_tensor(dw, dtype=torch.long, device=images.device)
    if dh.ndim == 1:
        dh = dh.unsqueeze(0).expand(b, -1)
        dw = dw.unsqueeze(0).expand(b, -1)
    k = dh.shape[1]
    idx = torch.arange(b, device=images.device).unsqueeze(1).expand(b, k)
    out = ShiftBank(images).gather(idx.reshape(-1), dh.reshape(-1), dw.reshape(-1))
    return out.view(b, k, *images.shape[1:])
