"""The dataset every audit runs on, and where its images come from (files, tensors, a user's Dataset).

:class:`AuditDataset` yields ``(image, label)`` with the image already preprocessed (float ``(C, H, W)``) and the
label an int (-1 when unlabelled). Image files are decoded lazily in ``__getitem__`` so that DataLoader workers
decode in parallel; nothing but the file list is read up front.

What happened while decoding (images converted to RGB, enlarged to the crop size, unreadable) is reported back to
the main process by :func:`~shiftaudit.data.loader.make_loader`'s loader and shows up in ``dataset.notes`` once the
audit has run. An unreadable file is skipped by the loader (and, read directly with ``dataset[i]``, comes back as an
all-NaN image, which the engine leaves out as non-finite); with ``strict=True`` it raises
:class:`~shiftaudit.errors.DataError`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from shiftaudit.data.preprocess import (
    CONVERTED,
    ENLARGED,
    NONFINITE,
    UNREADABLE,
    ImageTooLarge,
    adapt_channels,
    decode_image,
    finish,
    pil_mode_for,
)
from shiftaudit.data.presets import Preprocessing
from shiftaudit.errors import DataError
from shiftaudit.files import reason

DROPPED = UNREADABLE | NONFINITE  # images the loader leaves out (and --strict refuses)

# ---------------------------------------------------------------------------------------------------------------
# Sources: where image i comes from, before preprocessing
# ---------------------------------------------------------------------------------------------------------------


class EncodedImageSource:
    """A source of encoded images (files, dataset rows, tar members): decoded on demand, failures explained by name.

    A subclass says where image i's bytes are (:meth:`encoded`: a path or a binary stream) and how the report
    names it (:meth:`name`).
    """

    in_memory = False

    def __len__(self) -> int:
        raise NotImplementedError

    def encoded(self, i: int) -> str | BinaryIO:
        raise NotImplementedError

    def name(self, i: int) -> str:
        raise NotImplementedError

    def get(self, i: int, prep: Preprocessing | None, channels: int) -> tuple[torch.Tensor, int]:
        img, flags = decode_image(self.encoded(i), channels)
        x, more = finish(img, prep)
        return x, flags | more

    def error(self, i: int, channels: int, prep: Preprocessing | None = None) -> str:
        """Why image i cannot be read (decoded and prepared again in the main process to get the reason)."""
        try:
            self.get(i, prep, channels)
        except Exception as exc:  # any decoder failure is the reason we report
            return decode_reason(exc, self.name(i))
        return "it could not be decoded"


class FileSource(EncodedImageSource):
    """Image files, decoded on demand."""

    def __init__(self, files: Sequence[Path], root: Path | str | None = None) -> None:
        self.files = [str(f) for f in files]
        self.root = None if root is None else str(root)

    def relative(self, i: int) -> str:
        """File i's path relative to the data folder (as the user gave it), with ``/`` separators."""
        path = self.files[i]
        if self.root is not None:
            with contextlib.suppress(ValueError):  # another drive on Windows
                path = os.path.relpath(path, self.root)
        return path.replace(os.sep, "/")

    def __len__(self) -> int:
        return len(self.files)

    def name(self, i: int) -> str:
        return self.files[i]

    def encoded(self, i: int) -> str:
        return self.files[i]


def decode_reason(exc: BaseException, path: str) -> str:
    """Why PIL could not decode ``path``, in words (PIL's own messages repeat the path and name no fix)."""
    if isinstance(exc, ImageTooLarge):
        return str(exc)
    if isinstance(exc, Image.DecompressionBombError):  # PIL's own guard, above 179 Mpixel: same words as ours
        return f"it is too large: {str(exc).split(',')[0].lower()} (a decompression bomb?)"
    if isinstance(exc, UnidentifiedImageError):
        return "it is not an image PIL can decode (corrupt, empty, or an unsupported format)"
    if isinstance(exc, OSError) and exc.errno is not None:
        return reason(exc)
    text = str(exc).replace(f"'{path}'", "the file").replace(path, "the file").strip().rstrip(".")
    if "truncated" in text.lower():
        return "the file is truncated"
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


class TensorSource:
    """A stack of images in memory: NCHW or NHWC, uint8 (0-255) or float (0-1, or as is when ``raw``)."""

    in_memory = True

    def __init__(self, images: torch.Tensor, *, channels_last: bool, raw: bool, scale: float | None) -> None:
        self.images = images
        self.channels_last = channels_last
        self.raw = raw
        self.scale = scale  # divide integer data by this to get [0, 1]; None: uint8 or float, handled by finish

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def name(self, i: int) -> str:
        return f"image {i}"

    def get(self, i: int, prep: Preprocessing | None, channels: int) -> tuple[torch.Tensor, int]:
        img = self.images[i]
        if self.channels_last:
            img = img.permute(2, 0, 1)
        if self.raw:
            return img.to(torch.float32).contiguous(), 0
        if self.scale is not None:
            img = img.to(torch.float32) / self.scale
        elif img.dtype not in (torch.uint8, torch.float32, torch.float64, torch.float16, torch.bfloat16):
            img = img.to(torch.uint8)
        img, flags = adapt_channels(img, channels)
        x, more = finish(img, prep)
        return x, flags | more

    def error(self, i: int, channels: int, prep: Preprocessing | None = None) -> str:
        return "it could not be read"


class DatasetSource:
    """A user's torch Dataset yielding ``(image, label)`` (image: tensor or PIL image) or just images."""

    in_memory = True

    def __init__(self, dataset: Any, *, raw: bool) -> None:
        self.dataset = dataset
        self.raw = raw

    def __len__(self) -> int:
        return len(self.dataset)

    def name(self, i: int) -> str:
        return f"item {i}"

    def item(self, i: int) -> tuple[Any, int]:
        it = self.dataset[i]
        if isinstance(it, (tuple, list)):
            img, label = it[0], (it[1] if len(it) > 1 else -1)
            return img, int(label) if label is not None else -1
        return it, -1

    def get(self, i: int, prep: Preprocessing | None, channels: int) -> tuple[torch.Tensor, int]:
        img, _ = self.item(i)
        return to_chw(img, prep, channels, self.raw)

    def error(self, i: int, channels: int, prep: Preprocessing | None = None) -> str:
        return "it could not be read"


ImageSource = EncodedImageSource | TensorSource | DatasetSource  # shards and dataset rows are encoded images


def to_chw(img: Any, prep: Preprocessing | None, channels: int, raw: bool) -> tuple[torch.Tensor, int]:
    """One in-memory image (PIL, ndarray or tensor; CHW, HWC or HW) to the preprocessed network input."""
    flags = 0
    if isinstance(img, Image.Image):
        mode = pil_mode_for(channels)
        if mode is None:
            raise DataError(f"PIL images cannot give the {channels} channels the model expects.")
        if img.mode != mode:
            img, flags = img.convert(mode), CONVERTED
        x, more = finish(
            torch.from_numpy(np.array(img, dtype=np.uint8)).reshape(img.height, img.width, -1).permute(2, 0, 1), prep
        )
        return x, flags | more
    t = torch.as_tensor(np.asarray(img)) if not isinstance(img, torch.Tensor) else img
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3:
        raise DataError(f"A dataset item has shape {tuple(t.shape)}; images must be (C, H, W), (H, W, C) or (H, W).")
    if t.shape[0] not in (1, 3, 4) and t.shape[-1] in (1, 3, 4):
        t = t.permute(2, 0, 1)
    if raw:
        return t.to(torch.float32).contiguous(), 0
    t, flags = adapt_channels(t, channels)
    x, more = finish(t, prep)
    return x, flags | more


# ---------------------------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------------------------


class AuditDataset(Dataset):
    """Preprocessed images with optional labels, plus what the report needs to describe them.

    Attributes: ``has_labels``, ``labels`` (list of ints aligned with the items, or None), ``classes`` (class names
    by label index, or None), ``description``, ``kind`` (imagefolder, folder, cifar10, tensors, hf, webdataset, memory),
    ``image_size`` (H, W of every item), ``channels``, ``preprocessing`` and ``notes`` (what was converted, skipped
    or guessed; notes from decoding appear after the images have been read). ``canvas_margin``: set for crop-mode
    data (``load_data(..., canvas_margin=R)``): the items are canvases R px larger than the model input on every side.
    """

    def __init__(
        self,
        source: ImageSource,
        *,
        index: np.ndarray | None = None,
        labels: Sequence[int] | None,
        has_labels: bool | None = None,
        classes: list[str] | None = None,
        kind: str,
        description: str,
        image_size: tuple[int, int],
        channels: int,
        preprocessing: Preprocessing | None,
        notes: list[str] | None = None,
        strict: bool = False,
        canvas_margin: int | None = None,
    ) -> None:
        self.source = source
        self.index = np.arange(len(source), dtype=np.int64) if index is None else np.asarray(index, dtype=np.int64)
        self.labels: list[int] | None = None if labels is None else [int(v) for v in labels]
        if self.labels is not None and len(self.labels) != len(self.index):
            raise ValueError("labels must be aligned with the selected items")
        self.has_labels = bool(has_labels) if has_labels is not None else self.labels is not None
        self.classes = classes
        self.kind = kind
        self.description = description
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.channels = int(channels)
        self.preprocessing = preprocessing
        self.strict = strict
        self.canvas_margin = canvas_margin
        self._notes: list[str] = list(notes or [])
        self._flags = np.zeros(len(self.index), dtype=np.uint8)
        self._seen = np.zeros(len(self.index), dtype=bool)

    # -- items -----------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.index)

    def label(self, i: int) -> int:
        if self.labels is not None:
            return self.labels[i]
        if isinstance(self.source, DatasetSource) and self.has_labels:
            return self.source.item(int(self.index[i]))[1]
        return -1

    def load(self, i: int) -> tuple[torch.Tensor, int, int]:
        """Item i as ``(image, label, flags)``; an unreadable file gives an all-NaN image and the UNREADABLE flag."""
        j = int(self.index[i])
        try:
            x, flags = self.source.get(j, self.preprocessing, self.channels)
        except DataError:
            raise
        except Exception:  # a corrupt file may raise anything from inside the decoder
            if self.source.in_memory:  # encoded images (files, shard members, dataset rows) may be corrupt; arrays not
                raise
            x = torch.full((self.channels, *self.image_size), float("nan"))
            flags = UNREADABLE
        if not flags & UNREADABLE and not bool(torch.isfinite(x).all()):
            flags |= NONFINITE  # NaN/inf pixels: said as the data's problem, never passed on to the model
        return x, self.label(i), flags

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y, flags = self.load(i)
        self.record(np.array([i]), np.array([flags]))
        if flags & DROPPED and self.strict:
            raise self.unreadable_error(i)
        return x, y

    def image_path(self, i: int) -> str | None:
        """Item i's file path relative to the data folder (``shard.tar:key`` in shards, ``row N`` in a Hugging Face
        dataset), or None for data that is not files (tensors, CIFAR)."""
        relative = getattr(self.source, "relative", None)
        return None if relative is None else str(relative(int(self.index[i])))

    def shard_ids(self) -> np.ndarray | None:
        """The shard each item comes from (tar shards), so that torchrun can give each process whole shards; else None."""
        shard = getattr(self.source, "shard", None)
        return None if shard is None else np.asarray(shard)[self.index]

    # -- what decoding found ---------------------------------------------------------------------------------

    def record(self, ids: np.ndarray, flags: np.ndarray) -> None:
        self._flags[ids] |= flags.astype(np.uint8)
        self._seen[ids] = True

    def unreadable_error(self, i: int) -> DataError:
        j = int(self.index[i])
        if self._flags[i] & NONFINITE and not self._flags[i] & UNREADABLE:
            what = f"image {self.source.name(j)}" if not self.source.in_memory else self.source.name(j)
            return DataError(
                f"{what[0].upper()}{what[1:]} has NaN or infinite pixel values (a problem in the data, not the model)",
                hint="leave out --strict to skip such images",
            )
        return DataError(
            f"Cannot read image {self.source.name(j)}: {self.source.error(j, self.channels, self.preprocessing)}.",
            hint="leave out --strict to skip unreadable images",
        )

    def unreadable(self, flag: int = UNREADABLE) -> list[str]:
        """Names of the images found unreadable (or with ``flag``, e.g. NONFINITE) so far."""
        return [self.source.name(int(self.index[i])) for i in np.flatnonzero(self._flags & flag)]

    @property
    def notes(self) -> list[str]:
        out = list(self._notes)
        n_conv = int(np.count_nonzero(self._flags & CONVERTED))
        if n_conv:
            target = {1: "grayscale", 3: "RGB", 4: "RGBA"}.get(self.channels, f"{self.channels} channels")
            out.append(f"converted {n_conv} image{'s' if n_conv != 1 else ''} with another colour mode to {target}")
        n_big = int(np.count_nonzero(self._flags & ENLARGED))
        if n_big:
            h, w = self.image_size
            out.append(f"{n_big} image{'s' if n_big != 1 else ''} smaller than the {h}x{w} crop enlarged to cover it")
        bad = self.unreadable()
        if bad:
            out.append(f"{len(bad)} unreadable image{'s' if len(bad) != 1 else ''} skipped: {_names(bad)}")
        nan = self.unreadable(NONFINITE)
        if nan:
            out.append(
                f"{len(nan)} image{'s' if len(nan) != 1 else ''} with NaN or infinite pixel values skipped (a "
                f"problem in the data, not the model): {_names(nan)}"
            )
        return out

    @notes.setter
    def notes(self, value: list[str]) -> None:
        self._notes = list(value)

    def add_note(self, note: str) -> None:
        """One more note, after the ones given (the counts of converted, enlarged and skipped images stay last)."""
        self._notes.append(note)

    def __repr__(self) -> str:
        return f"AuditDataset({self.description!r})"


def _names(names: list[str]) -> str:
    return ", ".join(os.path.basename(b) for b in names[:5]) + (", ..." if len(names) > 5 else "")
