"""Shift sets and batched circular shifts (the paper's Eq. 4).

A shift set also names its *shift mode* (see :mod:`shiftaudit.shifts.modes`): ``circular`` (Eq. 4, integer offsets
modulo the size), ``crop`` (windows of a larger canvas: integer offsets, nothing wraps, the radius is the plain
Chebyshev norm) or ``subpixel`` (Fourier phase shifts: float offsets, periodic like circular shifts).

``Shift_{dh,dw}(X)[c, h, w] = X[c, (h - dh) mod H, (w - dw) mod W]`` is ``torch.roll(X, (dh, dw), (-2, -1))``.
Two offsets equal modulo the image size are the same shift, so every shift is stored once, under its canonical
signed offset (in ``(-H/2, H/2]``), and its *radius* is the Chebyshev distance on the torus: the smallest ``r``
such that the shift lies in the window ``[-r, r]^2``. The set is ordered by growing radius, zero shift first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shiftaudit.errors import UsageError
from shiftaudit.limits import MAX_SHIFTS
from shiftaudit.shifts.base import DECIMALS, ShiftMode, canonical_offset, cyclic_radius, get_shift_mode

__all__ = ["DECIMALS", "ShiftSet", "canonical_offset", "cyclic_radius", "default_shift_set", "offset_json", "shift_mode"]


def shift_mode(name: str) -> ShiftMode:
    """The registered mode called ``name`` (importing the package's modules registers the built-in ones)."""
    import shiftaudit.shifts.modes  # noqa: F401  (registers circular, crop and subpixel)

    return get_shift_mode(name)


def offset_json(v: Any) -> int | float:
    """An offset or radius for JSON: an int when it is whole, else a float (sub-pixel shifts)."""
    f = float(v)
    return int(round(f)) if abs(f - round(f)) < 1e-9 else round(f, 6)


@dataclass(frozen=True)
class ShiftSet:
    """An ordered set of distinct shifts of an ``height x width`` input, in one shift mode.

    ``circular`` (default) and ``crop`` sets hold int64 offsets, ``subpixel`` sets float64 offsets. The radius is
    the Chebyshev distance on the torus for the periodic modes (circular, subpixel) and the plain
    ``max(|dh|, |dw|)`` for crop (a crop offset never wraps); it is float64 for subpixel sets.
    """

    height: int
    width: int
    dh: np.ndarray
    dw: np.ndarray
    kind: str
    max_shift: int
    step: int | float
    radius: np.ndarray = field(init=False, repr=False)
    mode: str = "circular"

    def __post_init__(self) -> None:
        r = shift_mode(self.mode).radius(self.dh, self.dw, self.height, self.width)
        object.__setattr__(self, "radius", r.astype(np.float64 if self.fractional else np.int64))

    @property
    def fractional(self) -> bool:
        """Whether offsets are floats (sub-pixel shifts)."""
        return shift_mode(self.mode).fractional or np.asarray(self.dh).dtype.kind == "f"

    @property
    def wraps(self) -> bool:
        """Whether shifts are periodic (offsets equal modulo the size are one shift): circular and subpixel."""
        return shift_mode(self.mode).wraps

    # -- construction -------------------------------------------------------------------------------------------
    @classmethod
    def window(cls, size: tuple[int, int], max_shift: int, step: int | float = 1, mode: str = "circular") -> ShiftSet:
        """Every shift in ``[-max_shift, max_shift]^2`` whose offsets are multiples of ``step``.

        Circular and subpixel sets are deduplicated modulo the size; a crop set is not (a crop offset never wraps).
        Only subpixel sets may have a fractional ``step`` (e.g. 0.5 for half-pixel, 0.25 for quarter-pixel shifts).
        """
        m = shift_mode(mode)
        h, w = int(size[0]), int(size[1])
        if max_shift < 0:
            raise UsageError(f"`max_shift` must be >= 0, got {max_shift}.")
        if not math.isfinite(float(step)):
            raise UsageError(f"`shift_step` must be a finite number, got {float(step):g}.")
        step = m.check_step(step)
        if max_shift > 0 and step > max_shift:
            raise UsageError(f"`shift_step` {step:g} is larger than `max_shift` {max_shift}: only the zero shift would remain.")
        if m.wraps and max_shift > max(h, w):
            raise UsageError(f"`max_shift` {max_shift} exceeds the image size {h}x{w}.")
        _check_count(m.count(h, w, max_shift, step), max_shift, step)
        offs = m.axis_offsets(max_shift, step)
        hh = np.unique(m.canonical(offs, h))
        ww = np.unique(m.canonical(offs, w))
        gh, gw = np.meshgrid(hh, ww, indexing="ij")
        covers_all = m.wraps and not m.fractional and len(hh) == h and len(ww) == w
        kind = "all" if covers_all else ("grid" if step != 1 else "window")
        return cls._ordered(h, w, gh.ravel(), gw.ravel(), kind, max_shift, step, mode)

    @classmethod
    def all_shifts(cls, size: tuple[int, int]) -> ShiftSet:
        """All ``H x W`` circular shifts."""
        h, w = int(size[0]), int(size[1])
        return cls.window((h, w), max(h, w) // 2, 1)

    @classmethod
    def from_offsets(
        cls,
        size: tuple[int, int],
        offsets: list[tuple[int, int]] | list[tuple[float, float]],
        kind: str = "custom",
        mode: str = "circular",
    ) -> ShiftSet:
        m = shift_mode(mode)
        h, w = int(size[0]), int(size[1])
        arr = np.asarray(offsets, dtype=np.float64 if m.fractional else np.int64).reshape(-1, 2)
        if not m.fractional and not np.array_equal(arr, np.asarray(offsets, dtype=np.float64).reshape(-1, 2)):
            raise UsageError(f"Fractional offsets need shift mode subpixel, not {mode}.")
        pairs = np.unique(np.stack([m.canonical(arr[:, 0], h), m.canonical(arr[:, 1], w)], 1), axis=0)
        if not ((pairs[:, 0] == 0) & (pairs[:, 1] == 0)).any():
            pairs = np.concatenate([np.zeros((1, 2), dtype=pairs.dtype), pairs])
        probe = cls(h, w, pairs[:, 0], pairs[:, 1], kind, 0, 1, mode)
        r = probe.radius.max()
        max_shift = int(np.ceil(r - 1e-9))
        return cls._ordered(h, w, pairs[:, 0], pairs[:, 1], kind, max_shift, 1, mode)

    @classmethod
    def _ordered(
        cls, h: int, w: int, dh: np.ndarray, dw: np.ndarray, kind: str, max_shift: int, step: int | float, mode: str = "circular"
    ) -> ShiftSet:
        radius = cls(h, w, dh, dw, kind, int(max_shift), step, mode).radius
        order = np.lexsort((dw, dh, radius))
        return cls(h, w, dh[order].copy(), dw[order].copy(), kind, int(max_shift), step, mode)

    # -- queries ------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.dh.shape[0])

    @property
    def zero_index(self) -> int:
        return 0  # ordered by radius: the zero shift comes first

    @property
    def radii(self) -> list[int] | list[float]:
        """The radii of the adversarial curve: the distinct radii of the set's shifts, zero included.

        Only radii the set holds: on a grid of step 4 the curve has r = 0, 4, 8, ... and no r = 1; reporting r = 1
        would repeat the zero-shift accuracy for a radius no shift tested.
        """
        if not len(self):
            return [0]
        return [offset_json(r) for r in np.unique(self.radius)]

    @property
    def padding(self) -> str:
        """How content outside the image is filled, in words (every report row names it)."""
        return shift_mode(self.mode).padding

    def describe(self) -> str:
        noun = shift_mode(self.mode).noun
        if self.kind == "all":
            return f"all {len(self)} {noun} of {self.height}x{self.width}"
        step = f", step {self.step:g}" if self.step != 1 else ""
        return f"{len(self)} {noun} in [-{self.max_shift}, {self.max_shift}]^2{step}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mode": self.mode,
            "kind": self.kind,
            "image_size": [self.height, self.width],
            "max_shift": self.max_shift,
            "step": offset_json(self.step),
            "count": len(self),
            "padding": self.padding,
        }
        return out


def _check_count(count: int, max_shift: int, step: int | float) -> None:
    """Refuse, before any offset array is built, a set larger than :data:`~shiftaudit.limits.MAX_SHIFTS`."""
    if count > MAX_SHIFTS:
        raise UsageError(
            f"`max_shift` {max_shift} with `shift_step` {step:g} gives about {count:,} shifts, more than the "
            f"{MAX_SHIFTS:,} allowed; use a larger `shift_step` or a smaller `max_shift`."
        )


def default_shift_set(
    size: tuple[int, int], max_shift: int | None = None, step: int | float | None = None, mode: str = "circular"
) -> ShiftSet:
    """The default keeps every audit affordable (each mode's ``default_set``).

    Small images (<= 64 px): every shift in the window of half the image size, i.e. all H x W shifts, the paper's
    CIFAR protocol. Larger images: a max shift of 16 px on a grid of step 4 (81 shifts), which still draws the
    adversarial curve at r = 0, 4, 8, 12, 16 at 224x224. Crop sets default to the canvas margin of
    :func:`~shiftaudit.shifts.modes.crop.default_crop_margin` (16 px at ImageNet sizes, the published protocol);
    sub-pixel sets to half-pixel shifts within 1 px (25 shifts).
    """
    return shift_mode(mode).default_set(size, max_shift, step)
