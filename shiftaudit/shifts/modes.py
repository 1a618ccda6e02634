"""Shift modes: how a shifted copy of an image is made.

* ``circular`` (default, the paper's Eq. 4): ``torch.roll`` of the preprocessed input; what leaves one side enters the
  other. Built by :class:`~shiftaudit.shifts.sets.ShiftBank`.
* ``crop``: the published ImageNet protocol. Each image is preprocessed to a *canvas* larger than the model input by a
  margin ``R`` on every side (resize the shorter side, centre-crop ``size + 2R``), and the model sees ``size`` crops of
  it: shift ``(dh, dw)`` is the crop at offset ``(R - dh, R - dw)`` of the canvas, so a positive ``dh`` moves the
  content down as ``torch.roll`` does, the zero shift is the centre crop, and new image content enters at the border
  (nothing wraps). With the ImageNet preset and ``R = 16`` the canvas is Resize(256) + CenterCrop(256) and the offsets
  run over 0..32 (see :func:`published_crop_shifts` for the 0..31 draw of the published consistency code).
* ``subpixel``: fractional shifts by a Fourier-domain phase shift (periodic, like circular shifts): multiply the 2-D
  DFT by ``exp(-2 pi i (k dh / H + l dw / W))`` and take the real part of the inverse. On even sizes the Nyquist bin
  gets the real factor ``cos(pi d)``, which keeps the output real and makes an integer shift exactly ``torch.roll``.

Every bank has ``gather(image_index, dh, dw)`` -> ``(n, C, H, W)`` shifted copies, like ``ShiftBank``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from shiftaudit.errors import DataError, UsageError
from shiftaudit.limits import MAX_SIDE, gib
from shiftaudit.shifts.sets import SHIFT_MODES, ShiftBank, ShiftSet, default_crop_margin

__all__ = [
    "SHIFT_MODES",
    "CropBank",
    "FourierBank",
    "check_shift_mode",
    "crop_margin",
    "fourier_shift",
    "input_geometry",
    "make_bank",
    "published_crop_shifts",
]


def check_shift_mode(mode: str) -> str:
    if mode not in SHIFT_MODES:
        raise UsageError(f"Unknown --shift-mode {mode!r}; use {', '.join(SHIFT_MODES)}.")
    return mode


# ---------------------------------------------------------------------------------------------------------------
# Crop mode
# ---------------------------------------------------------------------------------------------------------------


class CropBank:
    """``size`` windows of a batch of canvases: shift ``(dh, dw)`` is the window at ``(margin - dh, margin - dw)``.

    ``unfold`` gives every window as a zero-copy view; one advanced-indexing gather builds the batch.
    """

    def __init__(self, canvases: torch.Tensor, size: tuple[int, int]) -> None:
        if canvases.ndim != 4:
            raise ValueError(f"expected (B, C, H, W) canvases, got shape {tuple(canvases.shape)}")
        h, w = int(size[0]), int(size[1])
        ch, cw = canvases.shape[-2:]
        if (ch - h) % 2 or (cw - w) % 2 or ch < h or cw < w:
            raise ValueError(f"a {ch}x{cw} canvas has no centred {h}x{w} crop with equal margins")
        self.height, self.width = h, w
        self.margin_h, self.margin_w = (ch - h) // 2, (cw - w) // 2
        self._windows = canvases.unfold(2, h, 1).unfold(3, w, 1)  # (B, C, ch-h+1, cw-w+1, h, w) view

    def gather(self, image_index: torch.Tensor, dh: torch.Tensor, dw: torch.Tensor) -> torch.Tensor:
        oh = self.margin_h - dh.long()
        ow = self.margin_w - dw.long()
        return self._windows[image_index, :, oh, ow].contiguous()


def check_canvas(size: tuple[int, int], margin: int, channels: int = 3) -> None:
    """Refuse, before any image is decoded, a crop canvas too large to hold: every image is preprocessed to it."""
    ch, cw = int(size[0]) + 2 * int(margin), int(size[1]) + 2 * int(margin)
    if max(ch, cw) > MAX_SIDE:
        raise UsageError(
            f"--max-shift {margin} in crop mode needs {ch}x{cw} canvases ({gib(ch * cw * channels * 4.0)} per image as "
            f"float32), more than the {MAX_SIDE} px allowed per side; use --max-shift {max(0, (MAX_SIDE - max(size)) // 2)} or less."
        )


def crop_margin(shift_mode: str, shifts: ShiftSet | None, max_shift: int | None, size: tuple[int, int]) -> int:
    """The canvas margin R a crop-mode audit needs: the shift set's reach, else --max-shift, else the default."""
    if shifts is not None:
        return int(np.max(np.abs(np.concatenate([shifts.dh, shifts.dw])))) if len(shifts) else 0
    if max_shift is not None:
        return int(max_shift)
    return default_crop_margin(size)


def input_geometry(dataset: Any, shift_mode: str, shifts: ShiftSet | None = None,
                   max_shift: int | None = None, notes: list[str] | None = None) -> tuple[tuple[int, int], int]:
    """``(model input size, canvas margin)`` of a dataset audited in ``shift_mode``. In crop mode the default
    --max-shift is the canvas margin.

    Circular and subpixel: the images are the inputs (margin 0). Crop: a dataset loaded with ``canvas_margin=R``
    holds canvases of the input size + 2R; any other dataset (tensors in memory, raw tensor files) is taken as the
    canvas itself, the input size being the canvas minus twice the margin (the shift set's reach, --max-shift, or the
    default margin of the canvas size).
    """
    size = (int(dataset.image_size[0]), int(dataset.image_size[1]))
    if shift_mode != "crop":
        if getattr(dataset, "canvas_margin", None):
            raise UsageError(f"The data was loaded as crop-mode canvases; audit it with shift_mode='crop', not {shift_mode!r}.")
        return size, 0
    margin = getattr(dataset, "canvas_margin", None)
    if margin is None:
        if shifts is not None:  # the set says the input size: the rest of the canvas is margin
            dh, dw = size[0] - shifts.height, size[1] - shifts.width
            if dh < 0 or dh % 2 or dh != dw:
                raise UsageError(f"A crop shift set for {shifts.height}x{shifts.width} inputs does not fit centred in {size[0]}x{size[1]} canvases.")
            margin = dh // 2
        else:
            margin = crop_margin(shift_mode, None, max_shift, size)
        if notes is not None:
            notes.append(
                f"crop mode: the {size[0]}x{size[1]} images are taken as canvases, the model sees "
                f"{size[0] - 2 * margin}x{size[1] - 2 * margin} crops of them (margin {margin} px)"
            )
    inner = (size[0] - 2 * margin, size[1] - 2 * margin)
    if min(inner) < 1:
        raise DataError(f"A crop margin of {margin} px leaves nothing of the {size[0]}x{size[1]} canvas; use a smaller --max-shift.")
    if shifts is not None:
        reach = crop_margin("crop", shifts, None, inner)
        if reach > margin:
            raise UsageError(f"The crop shift set reaches {reach} px but the canvas margin is {margin} px; load the data with canvas_margin={reach}.")
    elif max_shift is not None and max_shift > margin:
        raise UsageError(f"--max-shift {max_shift} is larger than the {margin} px margin of the crop canvas.")
    return inner, int(margin)


def published_crop_shifts(size: tuple[int, int] = (224, 224), canvas: tuple[int, int] = (256, 256),
                          offsets: int = 32) -> ShiftSet:
    """The crop offsets of the published ImageNet consistency code: ``offsets`` x ``offsets`` crop positions
    0..offsets-1 per axis of the canvas (Zhang's ``validate_shift``: Resize(256), CenterCrop(256), two crops at
    ``np.random.randint(32, size=2)``), as a crop-mode shift set: offset ``o`` is the shift ``margin - o``, so
    224 in 256 gives dh, dw in -15..16. (Our symmetric ``--max-shift 16`` window covers offsets 0..32, the 33
    positions of the published diagonal evaluation.)"""
    mh, mw = (canvas[0] - size[0]) // 2, (canvas[1] - size[1]) // 2
    if canvas[0] - size[0] < offsets - 1 or canvas[1] - size[1] < offsets - 1 or (canvas[0] - size[0]) % 2 or (canvas[1] - size[1]) % 2:
        raise UsageError(f"{offsets} crop offsets of {size[0]}x{size[1]} do not fit a {canvas[0]}x{canvas[1]} canvas symmetrically.")
    pairs = [(mh - a, mw - b) for a in range(offsets) for b in range(offsets)]
    return ShiftSet.from_offsets(size, pairs, kind="published", mode="crop")


# ---------------------------------------------------------------------------------------------------------------
# Sub-pixel mode
# ---------------------------------------------------------------------------------------------------------------


def _phase(n: int, d: torch.Tensor) -> torch.Tensor:
    """(len(d), n) complex factors ``exp(-2 pi i k d / n)`` over the DFT frequencies k; the Nyquist bin of an even n
    gets ``cos(pi d)`` so the shifted signal stays real (and equals the roll for integer d)."""
    k = torch.fft.fftfreq(n, d=1.0, dtype=torch.float64, device=d.device) * n  # integer frequencies, Nyquist -n/2
    ang = -2.0 * torch.pi * d.to(torch.float64)[:, None] * k[None, :] / n
    ph = torch.polar(torch.ones_like(ang), ang)
    if n % 2 == 0:
        ph[:, n // 2] = torch.cos(torch.pi * d.to(torch.float64)).to(ph.dtype)
    return ph


def fourier_shift(x: torch.Tensor, dh: torch.Tensor | float, dw: torch.Tensor | float) -> torch.Tensor:
    """Shift ``(n, C, H, W)`` images by per-image fractional ``(dh, dw)`` (or one shared pair) in the Fourier domain."""
    n = x.shape[0]
    dh = torch.as_tensor(dh, dtype=torch.float64, device=x.device).reshape(-1).expand(n)
    dw = torch.as_tensor(dw, dtype=torch.float64, device=x.device).reshape(-1).expand(n)
    spec = torch.fft.fft2(x.to(torch.float32))
    return _apply_phase(spec, dh, dw).to(x.dtype)


def _apply_phase(spec: torch.Tensor, dh: torch.Tensor, dw: torch.Tensor) -> torch.Tensor:
    h, w = spec.shape[-2:]
    ph = _phase(h, dh).to(torch.complex64)[:, None, :, None] * _phase(w, dw).to(torch.complex64)[:, None, None, :]
    return torch.fft.ifft2(spec * ph).real


class FourierBank:
    """Sub-pixel shifts of a batch of images: the spectra are computed once, each gathered copy costs one
    multiply and one inverse FFT."""

    def __init__(self, images: torch.Tensor) -> None:
        if images.ndim != 4:
            raise ValueError(f"expected (B, C, H, W) images, got shape {tuple(images.shape)}")
        self.dtype = images.dtype
        self.height, self.width = images.shape[-2:]
        self._spec = torch.fft.fft2(images.to(torch.float32))

    def gather(self, image_index: torch.Tensor, dh: torch.Tensor, dw: torch.Tensor) -> torch.Tensor:
        out = _apply_phase(self._spec[image_index], dh, dw)
        return out.to(self.dtype).contiguous()


def make_bank(x: torch.Tensor, shifts: ShiftSet) -> ShiftBank | CropBank | FourierBank:
    """The bank that builds ``shifts.mode`` shifted copies of the batch ``x`` (canvases in crop mode)."""
    if shifts.mode == "crop":
        return CropBank(x, (shifts.height, shifts.width))
    if shifts.mode == "subpixel":
        return FourierBank(x)
    return ShiftBank(x)
