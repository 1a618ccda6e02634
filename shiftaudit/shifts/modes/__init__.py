"""Shift modes: how a shifted copy of an image is made, one file per mode, registered by name.

* ``circular`` (default, the paper's Eq. 4): ``torch.roll`` of the preprocessed input (:mod:`.circular`).
* ``crop``: crops of a canvas larger than the input, the published ImageNet protocol; nothing wraps (:mod:`.crop`).
* ``subpixel``: fractional Fourier phase shifts, periodic like circular shifts (:mod:`.subpixel`).

Every bank has ``gather(image_index, dh, dw)`` -> ``(n, C, H, W)`` shifted copies. A new mode is a
:class:`~shiftaudit.shifts.base.ShiftMode` subclass registered with :func:`register_shift_mode`.
"""

from __future__ import annotations

from typing import Any

import torch

from shiftaudit.shifts.base import (
    Bank,
    ShiftMode,
    get_shift_mode,
    register_shift_mode,
    shift_mode_names,
    unregister_shift_mode,
)
from shiftaudit.shifts.modes.circular import ShiftBank, roll_batch
from shiftaudit.shifts.modes.crop import CropBank, check_canvas, crop_margin, default_crop_margin, published_crop_shifts
from shiftaudit.shifts.modes.subpixel import FourierBank, fourier_shift
from shiftaudit.shifts.sets import ShiftSet

__all__ = [
    "Bank",
    "CropBank",
    "FourierBank",
    "ShiftBank",
    "ShiftMode",
    "check_canvas",
    "check_shift_mode",
    "crop_margin",
    "default_crop_margin",
    "fourier_shift",
    "gather_into",
    "get_shift_mode",
    "input_geometry",
    "make_bank",
    "published_crop_shifts",
    "register_shift_mode",
    "roll_batch",
    "shift_mode_names",
    "unregister_shift_mode",
]


def check_shift_mode(mode: str) -> str:
    return get_shift_mode(mode, "`shift_mode`").name


def input_geometry(
    dataset: Any, shift_mode: str, shifts: ShiftSet | None = None, max_shift: int | None = None, notes: list[str] | None = None
) -> tuple[tuple[int, int], int]:
    """``(model input size, canvas margin)`` of a dataset audited in ``shift_mode`` (see each mode's ``geometry``)."""
    return get_shift_mode(shift_mode, "`shift_mode`").geometry(dataset, shifts, max_shift, notes)


def make_bank(x: torch.Tensor, shifts: ShiftSet) -> Bank:
    """The bank that builds ``shifts.mode`` shifted copies of the batch ``x`` (canvases in crop mode)."""
    return get_shift_mode(shifts.mode).bank(x, shifts)


def gather_into(bank: Any, out: torch.Tensor, image_index: torch.Tensor, dh: torch.Tensor, dw: torch.Tensor) -> None:
    """``out[:] = bank.gather(...)``, written in place when the bank can (circular), copied otherwise."""
    direct = getattr(bank, "gather_into", None)
    if direct is not None:
        direct(out, image_index, dh, dw)
    else:
        out.copy_(bank.gather(image_index, dh, dw))
