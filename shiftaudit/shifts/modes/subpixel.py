"""Sub-pixel shifts: fractional shifts by a Fourier-domain phase shift (periodic, like circular shifts).

Multiply the 2-D DFT by ``exp(-2 pi i (k dh / H + l dw / W))`` and take the real part of the inverse. On even sizes the
Nyquist bin gets the real factor ``cos(pi d)``, which keeps the output real and makes an integer shift exactly
``torch.roll``.
"""

from __future__ import annotations

import numpy as np
import torch

from shiftaudit.errors import UsageError
from shiftaudit.shifts.base import DECIMALS, ShiftMode, register_shift_mode
from shiftaudit.shifts.sets import ShiftSet


class SubpixelShifts(ShiftMode):
    name = "subpixel"
    noun = "sub-pixel shifts"
    padding = "periodic (Fourier phase shift)"
    fractional = True

    def check_step(self, step: int | float) -> float:
        step = float(step)
        if not step > 0:
            raise UsageError(f"`shift_step` must be > 0, got {step:g}.")
        return step

    def axis_offsets(self, max_shift: int, step: int | float) -> np.ndarray:
        k = int(np.floor(max_shift / step + 1e-9))
        return np.round(np.arange(-k, k + 1, dtype=np.float64) * step, DECIMALS)

    def default_set(self, size: tuple[int, int], max_shift: int | None, step: int | float | None) -> ShiftSet:
        """Half-pixel shifts within 1 px (25 shifts)."""
        return ShiftSet.window(size, 1 if max_shift is None else max_shift, 0.5 if step is None else step, self.name)

    def bank(self, images: torch.Tensor, shifts: ShiftSet) -> FourierBank:
        return FourierBank(images)


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


SUBPIXEL = register_shift_mode(SubpixelShifts())
