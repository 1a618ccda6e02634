"""The built-in demo images: ten classes of small drawn shapes and textures, made from a seed.

Nothing is downloaded, and the classes are easy (a small CNN learns them in about a minute on a CPU) but full of
fine detail -- 2 px stripes, checkerboards, 1 px dot grids -- exactly what strided pooling aliases. A model
trained on them without shift augmentation is accurate yet visibly not shift-invariant, which is what the demo
wants to show. Everything is vectorised numpy and deterministic in the seed.
"""

from __future__ import annotations

import numpy as np

CLASS_NAMES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "cross",
    "ring",
    "horizontal stripes",
    "vertical stripes",
    "checkerboard",
    "diagonal bar",
    "dot grid",
)


RADIUS = (3.5, 7.0)  # shape radius in px at size 32
CONTRAST = (0.2, 0.5)  # |foreground - background| per channel, in [0, 1] units
NOISE = 0.1  # std of the per-pixel Gaussian noise


def _masks(label: int, dy: np.ndarray, dx: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Foreground mask of class ``label`` for offsets ``dy, dx`` (n, H, W) from each shape's centre, radius ``r``."""
    box = (np.abs(dy) <= r) & (np.abs(dx) <= r)
    dist2 = dy**2 + dx**2
    iy, ix = np.floor(dy).astype(np.int64), np.floor(dx).astype(np.int64)
    if label == 0:  # circle
        return dist2 <= r**2
    if label == 1:  # square
        return (np.abs(dy) <= 0.8 * r) & (np.abs(dx) <= 0.8 * r)
    if label == 2:  # triangle, apex up
        return (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
    if label == 3:  # plus-shaped cross
        return ((np.abs(dy) <= r) & (np.abs(dx) <= 1.5)) | ((np.abs(dx) <= r) & (np.abs(dy) <= 1.5))
    if label == 4:  # ring
        return (dist2 <= r**2) & (dist2 >= (r - 2.5) ** 2)
    if label == 5:  # horizontal stripes, period 4 px
        return box & ((iy // 2) % 2 == 0)
    if label == 6:  # vertical stripes
        return box & ((ix // 2) % 2 == 0)
    if label == 7:  # checkerboard of 2 px cells
        return box & (((iy // 2) + (ix // 2)) % 2 == 0)
    if label == 8:  # diagonal bar
        return box & (np.abs(dy - dx) <= 1.5)
    if label == 9:  # grid of 1 px dots, 3 px apart
        return box & (iy % 3 == 0) & (ix % 3 == 0)
    raise ValueError(label)


def make_synthetic(n: int, *, seed: int, size: int = 32, spread: float = 0.2) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """``n`` images ``(n, size, size, 3)`` uint8, their labels ``(n,)`` int64 (balanced, shuffled) and class names.

    Each image: a uniform background, one shape of a contrasting colour (dark on light or light on dark) of random
    radius, plus Gaussian noise (std 0.1). Like the objects in photo datasets, shapes are roughly centred: the centre is
    offset by up to ``spread * size`` px (and the shape stays inside the image). ``spread=0.5`` spreads them anywhere.
    """
    if n < 0 or size < 16:
        raise ValueError("n must be >= 0 and size >= 16")
    rng = np.random.default_rng(seed)
    k = len(CLASS_NAMES)
    labels = rng.permutation(np.arange(n) % k).astype(np.int64)
    scale = size / 32
    r = rng.uniform(RADIUS[0], RADIUS[1], size=n) * scale
    margin = r + 1
    mid = (size - 1) / 2
    lo = np.maximum(margin, mid - spread * size)
    hi = np.maximum(lo, np.minimum(size - 1 - margin, mid + spread * size))
    cy = rng.uniform(lo, hi)
    cx = rng.uniform(lo, hi)
    contrast = rng.uniform(CONTRAST[0], CONTRAST[1], size=(n, 1))
    bg = rng.uniform(0.0, 1.0 - contrast, size=(n, 3))
    fg = bg + contrast
    flip = rng.random(n) < 0.5  # dark on light or light on dark
    bg, fg = np.where(flip[:, None], fg, bg), np.where(flip[:, None], bg, fg)
    noise = rng.normal(0.0, NOISE, size=(n, size, size, 3))
    grid = np.arange(size, dtype=np.float64)
    mask = np.zeros((n, size, size), dtype=bool)
    for label in range(k):
        idx = np.flatnonzero(labels == label)
        if idx.size == 0:
            continue
        dy = grid[None, :, None] - cy[idx, None, None]
        dx = grid[None, None, :] - cx[idx, None, None]
        dy, dx = np.broadcast_arrays(dy, dx)
        mask[idx] = _masks(label, dy, dx, r[idx, None, None])
    img = np.where(mask[..., None], fg[:, None, None, :], bg[:, None, None, :]) + noise
    images = np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
    return images, labels, CLASS_NAMES
