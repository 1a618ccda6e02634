"""Shift sets and batched circular shifts (the paper's Eq. 4).

A shift set also names its *shift mode* (see :mod:`shiftaudit.shifts.modes`): ``circular`` (Eq. 4, integer offsets
modulo the size), ``crop`` (windows of a larger canvas: integer offsets, nothing wraps, the radius is the plain
Chebyshev norm) or ``subpixel`` (Fourier phase shifts: float offsets, periodic like circular shifts).

``Shift_{dh,dw}(X)[c, h, w] = X[c, (h - dh) mod H, (w - dw) mod W]`` is ``torch.roll(X, (dh, dw), (-2, -1))``.
Two offsets equal modulo the image size are the same shift, so every shift is stored once, under its canonical
signed offset (in ``(-H/2, H/2]``), and its *radius* is the Chebyshev distance on the torus: the smallest ``r``
such that the shift lies in the window ``[-r, r]^2``. The set is ordered by growing radius, zero shift first.

:class:`ShiftSet` is defined in :mod:`shiftaudit.shifts.base`, beside :class:`~shiftaudit.shifts.base.ShiftMode` (each
names the other); this module is where it is imported from, with the default sets.
"""

from __future__ import annotations

from shiftaudit.shifts.base import DECIMALS, ShiftSet, canonical_offset, cyclic_radius, offset_json, shift_mode

__all__ = ["DECIMALS", "ShiftSet", "canonical_offset", "cyclic_radius", "default_shift_set", "offset_json", "shift_mode"]


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
