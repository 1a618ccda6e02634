"""Crop shifts, the published ImageNet protocol: windows of a canvas larger than the model input; nothing wraps.

Each image is preprocessed to a *canvas* larger than the model input by a margin ``R`` on every side (resize the
shorter side, centre-crop ``size + 2R``), and the model sees ``size`` crops of it: shift ``(dh, dw)`` is the crop at
offset ``(R - dh, R - dw)`` of the canvas, so a positive ``dh`` moves the content down as ``torch.roll`` does, the zero
shift is the centre crop, and new image content enters at the border. With the ImageNet preset and ``R = 16`` the
canvas is Resize(256) + CenterCrop(256) and the offsets run over 0..32 (see :func:`published_crop_shifts` for the
0..31 draw of the published consistency code).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from shiftaudit.errors import DataError, UsageError
from shiftaudit.limits import MAX_SIDE, gib
from shiftaudit.shifts.base import ShiftMode, register_shift_mode
from shiftaudit.shifts.sets import ShiftSet


class CropShifts(ShiftMode):
    name = "crop"
    noun = "crop shifts"
    padding = "none: crops of a larger canvas, new content enters at the border"
    wraps = False

    def default_max_shift(self, size: tuple[int, int]) -> int:
        return default_crop_margin(size)

    def canvas_margin(self, shifts: ShiftSet | None, max_shift: int | None, size: tuple[int, int]) -> int | None:
        return crop_margin("crop", shifts, max_shift, size)

    def geometry(
        self, dataset: Any, shifts: ShiftSet | None, max_shift: int | None, notes: list[str] | None
    ) -> tuple[tuple[int, int], int]:
        return crop_geometry(dataset, shifts, max_shift, notes)

    def bank(self, images: torch.Tensor, shifts: ShiftSet) -> CropBank:
        return CropBank(images, (shifts.height, shifts.width))


def default_crop_margin(size: tuple[int, int]) -> int:
    """The canvas margin R of crop mode when no --max-shift is given: 16 px above 64 px (ImageNet: 224 + 2*16 =
    256, the published protocol), else an eighth of the size (32 px: 4, like CIFAR's pad-4 crops)."""
    return 16 if max(size) > 64 else max(1, max(size) // 8)


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
            f"`max_shift` {margin} in crop mode needs {ch}x{cw} canvases ({gib(ch * cw * channels * 4.0)} per image as "
            f"float32), more than the {MAX_SIDE} px allowed per side; use `max_shift` {max(0, (MAX_SIDE - max(size)) // 2)} "
            "or less."
        )


def crop_margin(shift_mode: str, shifts: ShiftSet | None, max_shift: int | None, size: tuple[int, int]) -> int:
    """The canvas margin R a crop-mode audit needs: the shift set's reach, else --max-shift, else the default."""
    if shifts is not None:
        return int(np.max(np.abs(np.concatenate([shifts.dh, shifts.dw])))) if len(shifts) else 0
    if max_shift is not None:
        return int(max_shift)
    return default_crop_margin(size)


def crop_geometry(
    dataset: Any, shifts: ShiftSet | None = None, max_shift: int | None = None, notes: list[str] | None = None
) -> tuple[tuple[int, int], int]:
    """``(model input size, canvas margin)`` of a dataset audited in ``shift_mode``. In crop mode the default
    --max-shift is the canvas margin.

    Circular and subpixel: the images are the inputs (margin 0). Crop: a dataset loaded with ``canvas_margin=R``
    holds canvases of the input size + 2R; any other dataset (tensors in memory, raw tensor files) is taken as the
    canvas itself, the input size being the canvas minus twice the margin (the shift set's reach, --max-shift, or the
    default margin of the canvas size).
    """
    size = (int(dataset.image_size[0]), int(dataset.image_size[1]))
    margin = getattr(dataset, "canvas_margin", None)
    if margin is None:
        if shifts is not None:  # the set says the input size: the rest of the canvas is margin
            dh, dw = size[0] - shifts.height, size[1] - shifts.width
            if dh < 0 or dh % 2 or dh != dw:
                raise UsageError(
                    f"A crop shift set for {shifts.height}x{shifts.width} inputs does not fit centred in {size[0]}x{size[1]} "
                    "canvases."
                )
            margin = dh // 2
        else:
            margin = crop_margin("crop", None, max_shift, size)
        if notes is not None:
            notes.append(
                f"crop mode: the {size[0]}x{size[1]} images are taken as canvases, the model sees "
                f"{size[0] - 2 * margin}x{size[1] - 2 * margin} crops of them (margin {margin} px)"
            )
    inner = (size[0] - 2 * margin, size[1] - 2 * margin)
    if min(inner) < 1:
        raise DataError(
            f"A crop margin of {margin} px leaves nothing of the {size[0]}x{size[1]} canvas; use a smaller `max_shift`."
        )
    if shifts is not None:
        reach = crop_margin("crop", shifts, None, inner)
        if reach > margin:
            raise UsageError(
                f"The crop shift set reaches {reach} px but the canvas margin is {margin} px; load the data with "
                f"canvas_margin={reach}."
            )
    elif max_shift is not None and max_shift > margin:
        raise UsageError(f"`max_shift` {max_shift} is larger than the {margin} px margin of the crop canvas.")
    return inner, int(margin)


def published_crop_shifts(
    size: tuple[int, int] = (224, 224), canvas: tuple[int, int] = (256, 256), offsets: int = 32
) -> ShiftSet:
    """The crop offsets of the published ImageNet consistency code: ``offsets`` x ``offsets`` crop positions
    0..offsets-1 per axis of the canvas (Zhang's ``validate_shift``: Resize(256), CenterCrop(256), two crops at
    ``np.random.randint(32, size=2)``), as a crop-mode shift set: offset ``o`` is the shift ``margin - o``, so
    224 in 256 gives dh, dw in -15..16. (Our symmetric ``--max-shift 16`` window covers offsets 0..32, the 33
    positions of the published diagonal evaluation.)"""
    mh, mw = (canvas[0] - size[0]) // 2, (canvas[1] - size[1]) // 2
    if (
        canvas[0] - size[0] < offsets - 1
        or canvas[1] - size[1] < offsets - 1
        or (canvas[0] - size[0]) % 2
        or (canvas[1] - size[1]) % 2
    ):
        raise UsageError(
            f"{offsets} crop offsets of {size[0]}x{size[1]} do not fit a {canvas[0]}x{canvas[1]} canvas symmetrically."
        )
    pairs = [(mh - a, mw - b) for a in range(offsets) for b in range(offsets)]
    return ShiftSet.from_offsets(size, pairs, kind="published", mode="crop")


CROP = register_shift_mode(CropShifts())
