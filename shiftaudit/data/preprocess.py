"""Turning one decoded image into the network input: colour mode, resize, centre crop, scale, normalise.

Both image files (decoded with PIL) and tensor data go through :func:`finish`, so a CIFAR pickle, an ``.npz`` and a
folder of PNGs with the same pixels give the same input. Every helper returns ``(image, flags)``: the flags say what
was done to the image (converted, enlarged, unreadable) so the dataset can report it in its notes, even when the
decoding ran in a DataLoader worker process.

torchvision is imported where an image is first transformed, not with the module: importing it takes seconds, and
the command line imports the data package (its kinds are ``--data-kind``'s choices) before it knows whether a
command reads any image.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image

from shiftaudit.data.presets import Preprocessing
from shiftaudit.limits import MAX_DECODED_PIXELS, MAX_PIXELS

CONVERTED = 1  # colour mode or channel count changed to match the model
UNREADABLE = 2  # the file could not be decoded
ENLARGED = 4  # smaller than the crop: resized up to cover it
NONFINITE = 8  # NaN or infinite pixel values: a problem in the data, not something to blame on the model

_PIL_MODE = {1: "L", 3: "RGB", 4: "RGBA"}


def pil_mode_for(channels: int) -> str | None:
    """The PIL mode that gives ``channels`` channels, or None when no image file can give that many."""
    return _PIL_MODE.get(channels)


def _gray(gray: torch.Tensor, channels: int) -> torch.Tensor:
    return gray.expand(channels, -1, -1).clone() if channels in (3, 4) else gray


def _deep_gray(im: Image.Image) -> torch.Tensor:
    """A 16/32-bit integer or 32-bit float grayscale image as ``(1, H, W)``: uint8, or float32 in [0, 1].

    PIL's ``convert("L")`` clips these to 0-255, which turns a float TIFF in [0, 1] black and saturates 16-bit data.
    Integers are scaled by their range (8 or 16 bits); floats in [0, 1] are kept, floats in [0, 255] divided by 255.
    NaN or infinite values are kept, so the dataset reports the file (:data:`NONFINITE`) instead of the model's NaNs.
    """
    arr = np.asarray(im, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if im.mode == "F":
        if lo < 0 or hi > 255:
            raise ValueError(f"float pixel values run from {lo:.3g} to {hi:.3g}, neither 0-1 nor 0-255")
        return torch.from_numpy((arr if hi <= 1.0 else arr / 255.0).astype(np.float32))[None]
    if lo < 0 or hi > 65535:
        raise ValueError(f"integer pixel values run from {lo:.0f} to {hi:.0f}, neither 8- nor 16-bit")
    if hi <= 255 and not im.mode.startswith("I;16"):
        return torch.from_numpy(arr.astype(np.uint8))[None]
    return torch.from_numpy(np.round(arr / 65535.0 * 255.0).astype(np.uint8))[None]


def decode_image(path: str | Path | BinaryIO, channels: int) -> tuple[torch.Tensor, int]:
    """Decode an image file (or its bytes, from a shard or a dataset row) to a ``(C, H, W)`` tensor in the colour
    mode the model needs: uint8 (0-255), or float32 in [0, 1] for float images.

    Raises whatever PIL raises for an unreadable file; the caller decides whether that is fatal (``strict``).
    """
    from torchvision.transforms.v2 import functional as F

    target = _PIL_MODE[channels]
    flags = 0
    with warnings.catch_warnings():  # PIL warns from 89 Mpixel on; the check below refuses from 64 Mpixel
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im = Image.open(path)
    with im:
        check_declared_size(im)
        im.load()
        if im.mode != target:
            flags |= CONVERTED
        if im.mode.startswith("I;16") or im.mode in ("I", "F"):  # deep grayscale: convert("L") would clip
            return _gray(_deep_gray(im), channels), flags
        img: Image.Image = im
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")  # avoids PIL's palette-transparency warning; alpha is dropped below
        if img.mode != target:
            img = img.convert(target)
        return F.pil_to_tensor(img), flags


class ImageTooLarge(ValueError):
    """An image header declares more pixels than :data:`MAX_DECODED_PIXELS`."""


def check_declared_size(im: Image.Image) -> None:
    """Refuse an image whose header declares more than :data:`MAX_DECODED_PIXELS` pixels, before decoding it.

    ``Image.open`` reads only the header; ``load`` allocates every pixel it declares (and a 16-bit or float image is
    then read as float64, 8 bytes a pixel). A few-byte PNG, GIF or TIFF header can declare 100000x100000; PIL refuses
    that itself (above 179 Mpixel) but only warns from 89 Mpixel, which still costs gigabytes here.
    """
    w, h = im.size
    if w * h > MAX_DECODED_PIXELS:
        raise ImageTooLarge(f"it is too large: its header declares {w}x{h} pixels, more than the {MAX_DECODED_PIXELS:,} allowed")


def adapt_channels(img: torch.Tensor, channels: int) -> tuple[torch.Tensor, int]:
    """Match a tensor image's channel count to the model's: RGB->gray (luma), gray->RGB (repeat), drop alpha."""
    from torchvision.transforms.v2 import functional as F

    c = img.shape[0]
    if c == channels:
        return img, 0
    if c == 4 and channels == 3:
        return img[:3], CONVERTED
    if c in (3, 4) and channels == 1:
        return F.rgb_to_grayscale(img[:3], num_output_channels=1), CONVERTED
    if c == 1 and channels in (3, 4):
        rep = img.expand(3, -1, -1)
        if channels == 4:
            alpha = torch.full_like(img, 255 if img.dtype == torch.uint8 else 1)
            rep = torch.cat([rep, alpha])
        return rep.contiguous(), CONVERTED
    raise ValueError(f"cannot turn {c}-channel images into {channels}-channel ones")


def check_pixels(hw: tuple[int, int] | torch.Size, prep: Preprocessing) -> None:
    """Refuse, before resizing, an image whose resize would be enormous (a 1 x 20000 strip resized to 256 px)."""
    h, w = int(hw[0]), int(hw[1])
    if min(h, w) < 1:
        raise ValueError(f"the image is {h}x{w} pixels")
    if prep.resize is None:
        return
    s = prep.resize / min(h, w)
    if h * s * w * s > MAX_PIXELS:
        raise ValueError(f"its {h}x{w} pixels would be resized to {h * s:.0f}x{w * s:.0f}, more than {MAX_PIXELS:,} pixels")


def finish(img: torch.Tensor, prep: Preprocessing | None) -> tuple[torch.Tensor, int]:
    """Resize, centre-crop, scale to [0, 1] and normalise a ``(C, H, W)`` image (uint8 0-255 or float 0-1).

    With ``prep`` None the image is only scaled to [0, 1] floats (no resize, no normalisation).
    The resize is bilinear with antialiasing on the uint8 image, like torchvision's PIL pipeline. An image smaller
    than the crop (after the optional resize) is enlarged just enough to cover it rather than padded with zeros:
    black borders would change the audit far more than a slight upscale.
    """
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    flags = 0
    if prep is not None:
        check_pixels(img.shape[-2:], prep)
        if prep.resize is not None:
            img = F.resize(img, [prep.resize], interpolation=InterpolationMode.BILINEAR, antialias=True)
        h, w = img.shape[-2:]
        ch, cw = prep.size
        if h < ch or w < cw:
            s = max(ch / h, cw / w)
            nh, nw = max(ch, math.ceil(h * s - 1e-6)), max(cw, math.ceil(w * s - 1e-6))
            img = F.resize(img, [nh, nw], interpolation=InterpolationMode.BILINEAR, antialias=True)
            flags |= ENLARGED
            h, w = nh, nw
        if (h, w) != (ch, cw):
            img = F.center_crop(img, [ch, cw])
    x = img.to(torch.float32) / 255.0 if img.dtype == torch.uint8 else img.to(torch.float32)
    if prep is not None:
        x = F.normalize(x, list(prep.mean), list(prep.std))
    return x, flags
