"""What a shift mode is, the registry of modes by name (``--shift-mode``), and the offset arithmetic they share.

A mode says how a shifted copy of an image is made (its *bank*) and what that means for a shift set: whether
offsets are whole pixels, whether they wrap modulo the size (two offsets equal modulo the size are one shift), how
far a shift is (its radius), which shifts an audit evaluates by default, and how reports describe it. Adding a mode
is one file with a :class:`ShiftMode` subclass and a :func:`register_shift_mode` call.

:class:`ShiftSet` lives here too, since a mode makes sets and a set asks its mode (import it from
:mod:`shiftaudit.shifts.sets`). The built-in modes register when the package :mod:`shiftaudit.shifts` is imported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar, Protocol

import numpy as np
import torch

from shiftaudit.errors import UsageError
from shiftaudit.limits import MAX_SHIFTS

DECIMALS = 9  # fractional offsets are rounded to this many decimals so that equal shifts deduplicate


class Bank(Protocol):
    """Shifted copies of a batch of images: ``gather(image_index, dh, dw)`` -> ``(n, C, H, W)``."""

    def gather(self, image_index: torch.Tensor, dh: torch.Tensor, dw: torch.Tensor) -> torch.Tensor: ...


def as_offsets(d: np.ndarray | int | float) -> np.ndarray:
    arr = np.asarray(d)
    if arr.dtype.kind == "f":
        return np.round(arr.astype(np.float64), DECIMALS)
    return arr.astype(np.int64)


def canonical_offset(d: np.ndarray | int | float, n: int) -> np.ndarray:
    """Signed representative of ``d mod n`` in ``(-n/2, n/2]`` (integers stay integers, floats stay floats)."""
    arr = as_offsets(d)
    if arr.dtype.kind == "f":
        m = np.round(np.mod(arr, n), DECIMALS)
        m = np.where(m >= n, m - n, m)
        return np.where(m > n / 2, m - n, m)
    m = np.mod(arr, n)
    return np.where(m > n // 2, m - n, m)


def cyclic_radius(d: np.ndarray | int | float, n: int) -> np.ndarray:
    """Smallest |offset| among the representatives of ``d mod n``."""
    arr = as_offsets(d)
    if arr.dtype.kind == "f":
        m = np.round(np.mod(arr, n), DECIMALS)
        return np.round(np.minimum(m, n - m), DECIMALS)
    m = np.mod(arr, n)
    return np.minimum(m, n - m)


class ShiftMode:
    """A periodic, whole-pixel mode by default (circular); subclasses override what differs."""

    name: ClassVar[str]
    noun: ClassVar[str]  # "circular shifts"
    padding: ClassVar[str]  # what fills the border, in words (every report names it)
    wraps: ClassVar[bool] = True  # offsets equal modulo the size are one shift
    fractional: ClassVar[bool] = False  # offsets may be fractions of a pixel
    rolls: ClassVar[bool] = False  # a shift is torch.roll of the input: what polyphase, early exit and per-layer
    # distances are built on

    def check_step(self, step: int | float) -> int | float:
        if float(step) != int(step):
            raise UsageError(f"A fractional `shift_step` ({float(step):g}) needs `shift_mode` subpixel.")
        if int(step) < 1:
            raise UsageError(f"`shift_step` must be >= 1, got {int(step)}.")
        return int(step)

    def axis_offsets(self, max_shift: int, step: int | float) -> np.ndarray:
        """The offsets of one axis of the window ``[-max_shift, max_shift]`` on a grid of ``step``."""
        offs = np.arange(-max_shift, max_shift + 1, dtype=np.int64)
        return offs[offs % step == 0]

    def canonical(self, offsets: np.ndarray, n: int) -> np.ndarray:
        """Each offset under the one name its shift is stored by (the signed representative modulo ``n``)."""
        return canonical_offset(offsets, n) if self.wraps else offsets

    def radius(self, dh: np.ndarray, dw: np.ndarray, height: int, width: int) -> np.ndarray:
        """How far each shift is: the smallest r with the shift in the window [-r, r]^2 (on the torus if it wraps)."""
        if not self.wraps:
            return np.maximum(np.abs(as_offsets(dh)), np.abs(as_offsets(dw)))
        return np.maximum(cyclic_radius(dh, height), cyclic_radius(dw, width))

    def count(self, height: int, width: int, max_shift: int, step: int | float) -> int:
        """How many shifts a window would hold, before any offset array is built."""
        per_axis = 2 * math.floor(max_shift / step + 1e-9) + 1
        if not self.wraps:
            return per_axis * per_axis
        # periodic offsets repeat modulo the size: at most size / step distinct ones per axis
        return min(per_axis, math.ceil(height / step)) * min(per_axis, math.ceil(width / step))

    def check_max_shift(self, max_shift: int, size: tuple[int, int]) -> None:
        """Refuse a --max-shift beyond what the mode can tell apart (for periodic shifts: half the input)."""
        half = max(size) // 2
        if self.wraps and max_shift > half:
            raise UsageError(
                f"`max_shift` {max_shift} is more than half the {size[0]}x{size[1]} input: every circular shift is "
                f"already within {half} px; use `max_shift` {half} or less."
            )

    def default_set(self, size: tuple[int, int], max_shift: int | None, step: int | float | None) -> ShiftSet:
        """Every shift for small images (<= 64 px, the paper's CIFAR protocol); 16 px on a step-4 grid above."""
        h, w = size
        small = max(h, w) <= 64
        if max_shift is None:
            max_shift = self.default_max_shift(size)
        if step is None:
            step = 1 if (small or max_shift <= 4) else max(1, min(4, max_shift // 4))
        return ShiftSet.window(size, max_shift, step, self.name)

    def default_max_shift(self, size: tuple[int, int]) -> int:
        return max(size) // 2 if max(size) <= 64 else 16

    def canvas_margin(self, shifts: ShiftSet | None, max_shift: int | None, size: tuple[int, int]) -> int | None:
        """The margin each image is preprocessed with beyond the model input (None: the image is the input)."""
        return None

    def geometry(
        self, dataset: Any, shifts: ShiftSet | None, max_shift: int | None, notes: list[str] | None
    ) -> tuple[tuple[int, int], int]:
        """``(model input size, canvas margin)`` of a dataset audited in this mode: the images are the inputs."""
        size = (int(dataset.image_size[0]), int(dataset.image_size[1]))
        if getattr(dataset, "canvas_margin", None):
            raise UsageError(f"The data was loaded as crop-mode canvases; audit it with shift_mode='crop', not {self.name!r}.")
        return size, 0

    def bank(self, images: torch.Tensor, shifts: ShiftSet) -> Bank:
        raise NotImplementedError


_MODES: dict[str, ShiftMode] = {}


def register_shift_mode(mode: ShiftMode) -> ShiftMode:
    """Make ``mode`` known by its name (``--shift-mode NAME``, ``ShiftSet(..., mode=NAME)``)."""
    if mode.name in _MODES and type(_MODES[mode.name]) is not type(mode):
        raise ValueError(f"a shift mode named {mode.name!r} is already registered")
    _MODES[mode.name] = mode
    return mode


def unregister_shift_mode(name: str) -> None:
    _MODES.pop(name, None)


def shift_mode_names() -> tuple[str, ...]:
    return tuple(_MODES)


def get_shift_mode(name: str, what: str = "shift mode") -> ShiftMode:
    """The registered mode; an unknown name is one sentence naming the choices (``what``: how the caller calls it)."""
    try:
        return _MODES[name]
    except (KeyError, TypeError):
        raise UsageError(f"Unknown {what} {name!r}; use {', '.join(_MODES)}.") from None


def shift_mode(name: str) -> ShiftMode:
    """The registered mode called ``name`` (importing the package registers the built-in ones)."""
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

    @cached_property
    def zero_index(self) -> int:
        """Where the zero shift sits: first in every set the constructors build (ordered by radius), found by its
        offsets in a set built directly in another order (``plan_audit`` refuses a set without it)."""
        hits = np.flatnonzero((np.asarray(self.dh) == 0) & (np.asarray(self.dw) == 0))
        return int(hits[0]) if hits.size else 0

    @cached_property
    def radius_order(self) -> np.ndarray:
        """The set's indices in order of growing radius (ties by offset), as the constructors order a set: the
        identity for their sets, the walk order for a set built directly in another order."""
        return np.lexsort((self.dw, self.dh, self.radius))

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
