"""What a shift mode is, the registry of modes by name (``--shift-mode``), and the offset arithmetic they share.

A mode says how a shifted copy of an image is made (its *bank*) and what that means for a shift set: whether
offsets are whole pixels, whether they wrap modulo the size (two offsets equal modulo the size are one shift), how
far a shift is (its radius), which shifts an audit evaluates by default, and how reports describe it. Adding a mode
is one file with a :class:`ShiftMode` subclass and a :func:`register_shift_mode` call.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import torch

from shiftaudit.errors import UsageError

if TYPE_CHECKING:
    from shiftaudit.shifts.sets import ShiftSet

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
        from shiftaudit.shifts.sets import ShiftSet

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
