"""Which images each optimiser step trains on and how each is shown, as pure functions of (seed, step, position).

A step's global batch, and every random shift, flip and crop in it, depend on nothing but the seed, the step number
and the sample's place in the batch: not on how many processes share the batch, how it is split into micro-batches,
or whether the run was resumed. That is what makes a 2-process run equal a 1-process run with the same global batch,
and a resumed run equal an uninterrupted one.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from shiftaudit.rng import STREAM_TRAIN_ORDER, STREAM_TRAIN_VIEW, splitmix64, uniform_integers

CROP_SCALE = (0.35, 1.0)  # milder than ImageNet training's 0.08: the student must still agree with the teacher
CROP_RATIO = (3 / 4, 4 / 3)
_DRAWS = 4  # per sample: shift rows, shift columns, flip, crop seed
_HIGH = 1 << 30


@functools.lru_cache(maxsize=2)  # drawn once per epoch, not once per step (n is a data set's size); read, never written
def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """A permutation of ``range(n)``: the order of the training images in ``epoch``."""
    key = int(splitmix64(np.uint64(seed & 0xFFFFFFFF) * np.uint64(1 << 20) + np.uint64(STREAM_TRAIN_ORDER * 65599 + epoch)))
    return torch.randperm(n, generator=torch.Generator().manual_seed(key & 0x7FFFFFFFFFFFFFFF))


def step_positions(n: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """The training-set positions of the global batch of optimiser step ``step`` (0-based): epochs of ``n // batch``
    steps, each a fresh seeded permutation; the last partial batch of an epoch is left out."""
    per_epoch = n // batch_size
    epoch, k = divmod(step, per_epoch)
    return epoch_order(n, seed, epoch)[k * batch_size : (k + 1) * batch_size]


def sample_keys(step: int, batch_size: int, offsets: torch.Tensor) -> np.ndarray:
    """One key per sample of a global batch (``offsets``: places in the batch): the id its draws are made from."""
    return (np.int64(step) * batch_size + offsets.numpy().astype(np.int64)).astype(np.int64)


def shifts_for(
    keys: np.ndarray, seed: int, stream: int, size: tuple[int, int], max_shift: int | None, count: int = 1
) -> np.ndarray:
    """``count`` circular shifts (dh, dw) per key: uniform over ``[-max_shift, max_shift]^2``, or over every offset
    when None. Shape ``(len(keys), count, 2)``."""
    return _as_shifts(uniform_integers(seed, stream, keys, 2 * count, _HIGH).reshape(len(keys), count, 2), size, max_shift)


def _as_shifts(draws: np.ndarray, size: tuple[int, int], max_shift: int | None) -> np.ndarray:
    """Uniform integers in ``[0, 2^30)`` (last axis: rows, columns) as shifts; 2^30 is a multiple of no odd side, but
    the bias is below 1e-8."""
    if max_shift is None:
        return np.stack([draws[..., 0] % size[0], draws[..., 1] % size[1]], axis=-1)
    return draws % (2 * max_shift + 1) - max_shift


def roll_each(images: torch.Tensor, shifts: np.ndarray) -> torch.Tensor:
    """Each image circularly shifted by its own (dh, dw) (Eq. 4 of the paper)."""
    if images.shape[0] == 0:
        return images
    return torch.stack([torch.roll(x, (int(a), int(b)), (-2, -1)) for x, (a, b) in zip(images, shifts)])


def _crop(image: torch.Tensor, key: int) -> torch.Tensor:
    """torchvision's RandomResizedCrop, its parameters drawn from ``key`` (not the global generator), back to size."""
    import torchvision.transforms as T  # local: torchvision loads when a crop is drawn, not when the CLI starts
    import torchvision.transforms.v2.functional as TF  # local: as above

    h, w = image.shape[-2:]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(key)
        i, j, ch, cw = T.RandomResizedCrop.get_params(image, list(CROP_SCALE), list(CROP_RATIO))
    return TF.resized_crop(image, i, j, ch, cw, [h, w], antialias=True)


def views(
    images: torch.Tensor, keys: np.ndarray, seed: int, max_shift: int | None, augment: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(what the teacher sees, what the student sees) for each sample: the augmented image (crop and flip with
    ``augment``), and that image circularly shifted."""
    draws = uniform_integers(seed, STREAM_TRAIN_VIEW, keys, _DRAWS, _HIGH)
    out = images
    if "crop" in augment:
        out = torch.stack([_crop(x, int(k)) for x, k in zip(out, draws[:, 3])])
    if "flip" in augment:
        flip = torch.from_numpy(draws[:, 2] % 2 == 1)
        out = torch.where(flip.view(-1, 1, 1, 1), out.flip(-1), out)
    size = (int(images.shape[-2]), int(images.shape[-1]))
    return out, roll_each(out, _as_shifts(draws[:, :2], size, max_shift))
