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
import torch

from shiftaudit.errors import UsageError
from shiftaudit.limits import MAX_SHIFTS


SHIFT_MODES = ("circular", "crop", "subpixel")
DECIMALS = 9  # fractional offsets are rounded to this many decimals so that equal shifts deduplicate


def _as_offsets(d: np.ndarray | int | float) -> np.ndarray:
    arr = np.asarray(d)
    if arr.dtype.kind == "f":
        return np.round(arr.astype(np.float64), DECIMALS)
    return arr.astype(np.int64)


def canonical_offset(d: np.ndarray | int | float, n: int) -> np.ndarray:
    """Signed representative of ``d mod n`` in ``(-n/2, n/2]`` (integers stay integers, floats stay floats)."""
    arr = _as_offsets(d)
    if arr.dtype.kind == "f":
        m = np.round(np.mod(arr, n), DECIMALS)
        m = np.where(m >= n, m - n, m)
        return np.where(m > n / 2, m - n, m)
    m = np.mod(arr, n)
    return np.where(m > n // 2, m - n, m)


def cyclic_radius(d: np.ndarray | int | float, n: int) -> np.ndarray:
    """Smallest |offset| among the representatives of ``d mod n``."""
    arr = _as_offsets(d)
    if arr.dtype.kind == "f":
        m = np.round(np.mod(arr, n), DECIMALS)
        return np.round(np.minimum(m, n - m), DECIMALS)
    m = np.mod(arr, n)
    return np.minimum(m, n - m)


def offset_json(v: Any) -> int | float:
    """An offset or radius for JSON: an int when it is whole, else a float (sub-pixel shifts)."""
    f = float(v)
    return int(round(f)) if abs(f - round(f)) < 1e-9 else round(f, 6)


def _check_mode(mode: str) -> None:
    if mode not in SHIFT_MODES:
        raise UsageError(f"Unknown shift mode {mode!r}; use {', '.join(SHIFT_MODES)}.")


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
        _check_mode(self.mode)
        if self.mode == "crop":
            r = np.maximum(np.abs(_as_offsets(self.dh)), np.abs(_as_offsets(self.dw)))
        else:
            r = np.maximum(cyclic_radius(self.dh, self.height), cyclic_radius(self.dw, self.width))
        object.__setattr__(self, "radius", r.astype(np.float64 if self.fractional else np.int64))

    @property
    def fractional(self) -> bool:
        """Whether offsets are floats (sub-pixel shifts)."""
        return self.mode == "subpixel" or np.asarray(self.dh).dtype.kind == "f"

    @property
    def wraps(self) -> bool:
        """Whether shifts are periodic (offsets equal modulo the size are one shift): circular and subpixel."""
        return self.mode != "crop"

    # -- construction -------------------------------------------------------------------------------------------
    @classmethod
    def window(cls, size: tuple[int, int], max_shift: int, step: int | float = 1, mode: str = "circular") -> ShiftSet:
        """Every shift in ``[-max_shift, max_shift]^2`` whose offsets are multiples of ``step``.

        Circular and subpixel sets are deduplicated modulo the size; a crop set is not (a crop offset never wraps).
        Only subpixel sets may have a fractional ``step`` (e.g. 0.5 for half-pixel, 0.25 for quarter-pixel shifts).
        """
        _check_mode(mode)
        h, w = int(size[0]), int(size[1])
        if max_shift < 0:
            raise UsageError(f"--max-shift must be >= 0, got {max_shift}.")
        if not math.isfinite(float(step)):
            raise UsageError(f"--shift-step must be a finite number, got {float(step):g}.")
        if mode == "subpixel":
            step = float(step)
            if not step > 0:
                raise UsageError(f"--shift-step must be > 0, got {step:g}.")
        else:
            if float(step) != int(step):
                raise UsageError(f"A fractional --shift-step ({float(step):g}) needs --shift-mode subpixel.")
            step = int(step)
            if step < 1:
                raise UsageError(f"--shift-step must be >= 1, got {step}.")
        if max_shift > 0 and step > max_shift:
            raise UsageError(f"--shift-step {step:g} is larger than --max-shift {max_shift}: only the zero shift would remain.")
        if mode != "crop" and 2 * max_shift + 1 > 2 * max(h, w) + 1 and max_shift > max(h, w):
            raise UsageError(f"--max-shift {max_shift} exceeds the image size {h}x{w}.")
        _check_count(h, w, max_shift, step, mode)
        if mode == "subpixel":
            k = int(np.floor(max_shift / step + 1e-9))
            offs = np.round(np.arange(-k, k + 1, dtype=np.float64) * step, DECIMALS)
        else:
            offs = np.arange(-max_shift, max_shift + 1, dtype=np.int64)
            offs = offs[offs % step == 0]
        if mode == "crop":
            hh = ww = np.unique(offs)
        else:
            hh = np.unique(canonical_offset(offs, h))
            ww = np.unique(canonical_offset(offs, w))
        gh, gw = np.meshgrid(hh, ww, indexing="ij")
        covers_all = mode == "circular" and len(hh) == h and len(ww) == w
        kind = "all" if covers_all else ("grid" if step != 1 else "window")
        return cls._ordered(h, w, gh.ravel(), gw.ravel(), kind, max_shift, step, mode)

    @classmethod
    def all_shifts(cls, size: tuple[int, int]) -> ShiftSet:
        """All ``H x W`` circular shifts."""
        h, w = int(size[0]), int(size[1])
        return cls.window((h, w), max(h, w) // 2, 1)

    @classmethod
    def from_offsets(cls, size: tuple[int, int], offsets: list[tuple[int, int]] | list[tuple[float, float]],
                     kind: str = "custom", mode: str = "circular") -> ShiftSet:
        _check_mode(mode)
        h, w = int(size[0]), int(size[1])
        arr = np.asarray(offsets, dtype=np.float64 if mode == "subpixel" else np.int64).reshape(-1, 2)
        if mode != "subpixel" and not np.array_equal(arr, np.asarray(offsets, dtype=np.float64).reshape(-1, 2)):
            raise UsageError(f"Fractional offsets need shift mode subpixel, not {mode}.")
        if mode == "crop":
            pairs = np.unique(arr, axis=0)
        else:
            pairs = np.unique(np.stack([canonical_offset(arr[:, 0], h), canonical_offset(arr[:, 1], w)], 1), axis=0)
        if not ((pairs[:, 0] == 0) & (pairs[:, 1] == 0)).any():
            pairs = np.concatenate([np.zeros((1, 2), dtype=pairs.dtype), pairs])
        probe = cls(h, w, pairs[:, 0], pairs[:, 1], kind, 0, 1, mode)
        r = probe.radius.max()
        max_shift = int(np.ceil(r - 1e-9))
        return cls._ordered(h, w, pairs[:, 0], pairs[:, 1], kind, max_shift, 1, mode)

    @classmethod
    def _ordered(cls, h: int, w: int, dh: np.ndarray, dw: np.ndarray, kind: str, max_shift: int, step: int | float,
                 mode: str = "circular") -> ShiftSet:
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
        return {
            "circular": "circular (wrap-around)",
            "crop": "none: crops of a larger canvas, new content enters at the border",
            "subpixel": "periodic (Fourier phase shift)",
        }[self.mode]

    def describe(self) -> str:
        noun = {"circular": "circular shifts", "crop": "crop shifts", "subpixel": "sub-pixel shifts"}[self.mode]
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


def _check_count(h: int, w: int, max_shift: int, step: int | float, mode: str) -> None:
    """Refuse, before any offset array is built, a set larger than :data:`~shiftaudit.limits.MAX_SHIFTS`."""
    per_axis = 2 * math.floor(max_shift / step + 1e-9) + 1
    if mode == "crop":
        count = per_axis * per_axis
    else:  # periodic offsets repeat modulo the size: at most size / step distinct ones per axis
        count = min(per_axis, math.ceil(h / step)) * min(per_axis, math.ceil(w / step))
    if count > MAX_SHIFTS:
        raise UsageError(
            f"--max-shift {max_shift} with --shift-step {step:g} gives about {count:,} shifts, more than the "
            f"{MAX_SHIFTS:,} allowed; use a larger --shift-step or a smaller --max-shift."
        )


def default_shift_set(size: tuple[int, int], max_shift: int | None = None, step: int | float | None = None,
                      mode: str = "circular") -> ShiftSet:
    """The default keeps every audit affordable.

    Small images (<= 64 px): every shift in the window of half the image size, i.e. all H x W shifts, the paper's
    CIFAR protocol. Larger images: a max shift of 16 px on a grid of step 4 (81 shifts), which still draws the
    adversarial curve at r = 0, 4, 8, 12, 16 at 224x224. Crop sets default to the canvas margin of
    :func:`default_crop_margin` (16 px at ImageNet sizes, the published protocol); sub-pixel sets to half-pixel
    shifts within 1 px (25 shifts).
    """
    h, w = size
    if mode == "subpixel":
        return ShiftSet.window(size, 1 if max_shift is None else max_shift, 0.5 if step is None else step, mode)
    small = max(h, w) <= 64
    if max_shift is None:
        if mode == "crop":
            max_shift = default_crop_margin(size)
        else:
            max_shift = max(h, w) // 2 if small else 16
    if step is None:
        step = 1 if (small or max_shift <= 4) else max(1, min(4, max_shift // 4))
    return ShiftSet.window(size, max_shift, step, mode)


def default_crop_margin(size: tuple[int, int]) -> int:
    """The canvas margin R of crop mode when no --max-shift is given: 16 px above 64 px (ImageNet: 224 + 2*16 =
    256, the published protocol), else an eighth of the size (32 px: 4, like CIFAR's pad-4 crops)."""
    return 16 if max(size) > 64 else max(1, max(size) // 8)


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
