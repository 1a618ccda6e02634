"""Circular shifts, the paper's Eq. 4: ``torch.roll`` of the preprocessed input; what leaves one side enters the other.

``Shift_{dh,dw}(X)[c, h, w] = X[c, (h - dh) mod H, (w - dw) mod W]`` is ``torch.roll(X, (dh, dw), (-2, -1))``. Two
offsets equal modulo the image size are the same shift, so every shift is stored once, under its canonical signed
offset (in ``(-H/2, H/2]``), and its radius is the Chebyshev distance on the torus.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from shiftaudit.shifts.base import ShiftMode, register_shift_mode

if TYPE_CHECKING:
    from shiftaudit.shifts.sets import ShiftSet


class CircularShifts(ShiftMode):
    name = "circular"
    noun = "circular shifts"
    padding = "circular (wrap-around)"
    rolls = True

    def bank(self, images: torch.Tensor, shifts: ShiftSet) -> ShiftBank:
        return ShiftBank(images)


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

    def gather_into(self, out: torch.Tensor, image_index: torch.Tensor, dh: torch.Tensor, dw: torch.Tensor) -> None:
        """:meth:`gather` written into ``out`` (contiguous ``(n, C, H, W)``), so a reused buffer takes the copies
        and no batch-sized tensor is allocated per forward."""
        oh = torch.remainder(-dh, self.height)
        ow = torch.remainder(-dw, self.width)
        torch.ops.aten.index.Tensor_out(self._windows, [image_index, None, oh, ow], out=out)


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


CIRCULAR = register_shift_mode(CircularShifts())
