"""Turning one decoded image into the network input: colour mode, resize, centre crop, scale, normalise.

Both image files (decoded with PIL) and tensor data go through :func:`finish`, so a CIFAR pickle, an ``.npz`` and a
folder of PNGs with the same pixels give the same input. Every helper returns ``(image, flags)``: the flags say what
was done to the image (converted, enlarged, unreadable) so the dataset can report it in its notes, even when the
decoding ran in a DataLoader worker process.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from ..presets import Preprocessing

CONVERTED = 1  # colour mode or channel count changed to match the model
UNREADABLE = 2  # the file could not be decoded
ENLARGED = 4  # smaller than the crop: resized up to cover it

_PIL_MODE = {1: "L", 3: "RGB", 4: "RGBA"}


def pil_mode_for(channels: int) -> str | None:
    """The PIL mode that gives ``channels`` channels, or None when no image file can give that many."""
    return _PIL_MODE.get(channels)


def decode_image(path: str | Path, channels: int) -> tuple[torch.Tensor, int]:
    """Decode an image file to a ``(C, H, W)`` uint8 tensor in the colour mode the model needs.

    Raises whatever PIL raises for an unreadable file; the caller decides whether that is fatal (``strict``).
    """
    target = _PIL_MODE[channels]
    flags = 0
    with Image.open(path) as im:
        im.load()
        if im.mode != target:
            flags |= CONVERTED
        if im.mode.startswith("I;16"):  # 16-bit grayscale: PIL's convert("L") would clip, scale instead
            arr = np.asarray(im, dtype=np.float64) / 65535.0
            gray = torch.from_numpy(np.round(arr * 255.0).astype(np.uint8))[None]
            return (gray.expand(channels, -1, -1).clone() if channels in (3, 4) else gray), flags
        if im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")  # avoids PIL's palette-transparency warning; alpha is dropped below
        if im.mode != target:
            im = im.convert(target)
        return F.pil_to_tensor(im), flags


def adapt_channels(img: torch.Tensor, channels: int) -> tuple[torch.Tensor, int]:
    """Match a tensor image's channel count to the model's: RGB->gray (luma), gray->RGB (repeat), drop alpha."""
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


def finish(img: torch.Tensor, prep: Preprocessing | None) -> tuple[torch.Tensor, int]:
    """Resize, centre-crop, scale to [0, 1] and normalise a ``(C, H, W)`` image (uint8 0-255 or float 0-1).

    With ``prep`` None the image is only scaled to [0, 1] floats (no resize, no normalisation).
    The resize is bilinear with antialiasing on the uint8 image, like torchvision's PIL pipeline. An image smaller
    than the crop (after the optional resize) is enlarged just enough to cover it rather than padded with zeros:
    black borders would change the audit far more than a slight upscale.
    """
    flags = 0
    if prep is not None:
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
