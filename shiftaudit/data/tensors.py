"""Tensor data: ``.npz``/``.npy``/``.pt``/``.pth`` files (the ``tensors`` kind) and, for objects, data in memory (a
tensor or array of images, an ``(images, labels)`` pair, or a torch Dataset).

A stack of images may be NCHW or NHWC (the model's channel count breaks ties), ``uint8`` (0-255), other integers
(0-255 or 0-65535) or float (0-1); ``raw`` says it is already the network input. What cannot be images is refused
with one sentence here, not deep in preprocessing.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from shiftaudit.data.dataset import DatasetSource, TensorSource, to_chw
from shiftaudit.data.kinds import DataKind, Loaded, Request, Skipped
from shiftaudit.data.preprocess import check_pixels
from shiftaudit.data.presets import Preprocessing
from shiftaudit.errors import DataError, first_line
from shiftaudit.limits import MAX_CLASSES
from shiftaudit.npyfiles import load_numpy
from shiftaudit.ziparchive import check_zip_file

TENSOR_SUFFIXES = (".npz", ".npy", ".pt", ".pth")
IMAGE_KEYS = ("images", "x", "data", "inputs", "imgs")
LABEL_KEYS = ("labels", "y", "targets", "label", "target")
CLASS_KEYS = ("classes", "class_names", "label_names")


def _as_numpy(x: Any, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    try:
        arr = np.asarray(x)
    except Exception:
        raise DataError(f"The {what} cannot be read as an array (got {type(x).__name__}).") from None
    if arr.dtype == object:
        raise DataError(f"The {what} must be a numeric array, not a {type(x).__name__} of Python objects.")
    return arr


def _labels_array(labels: Any, n: int, notes: list[str]) -> np.ndarray | None:
    """Integer labels of length n (one-hot rows are turned into indices); None when all are -1."""
    arr = _as_numpy(labels, "labels")
    if arr.ndim == 2 and arr.shape[0] == n and arr.shape[1] > 1:
        arr = arr.argmax(axis=1)
        notes.append("one-hot labels turned into class indices")
    arr = arr.reshape(-1) if arr.ndim == 2 and 1 in arr.shape else arr
    if arr.ndim != 1:
        raise DataError(f"Labels must be one class index per image; got an array of shape {arr.shape}.")
    if len(arr) != n:
        raise DataError(f"There are {n} images but {len(arr)} labels.")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise DataError("Labels must be whole class indices; found fractional or non-finite values.")
        if n and np.abs(arr).max() > MAX_CLASSES:
            raise DataError(
                f"Labels must be class indices; found {np.abs(arr).max():.3g}, more than the {MAX_CLASSES:,} classes allowed."
            )
    elif arr.dtype.kind not in "iub":
        raise DataError(f"Labels must be integer class indices, not {arr.dtype}.")
    arr = arr.astype(np.int64)
    if n and np.all(arr == -1):
        return None
    if n and arr.min() < 0:
        raise DataError(f"Labels must be class indices >= 0 (or -1 for every image when there are none); found {arr.min()}.")
    return arr


def _layout(shape: tuple[int, ...], channels: int | None) -> tuple[bool, int]:
    """(channels_last, channel count) of an NCHW/NHWC stack; the model's channel count breaks ties."""
    first, last = shape[1], shape[-1]
    if channels is not None and first == channels:
        return False, first
    if channels is not None and last == channels and first not in (1, 3, 4):
        return True, last
    if first in (1, 3, 4):
        return False, first
    if last in (1, 3, 4):
        return True, last
    raise DataError(
        f"Cannot find the channel dimension of images with shape {tuple(shape)}; expected N,C,H,W or N,H,W,C "
        "with 1, 3 or 4 channels."
    )


_IMAGE_DTYPES = (
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.bool,
)
_KIND_WORDS = {"U": "strings", "S": "bytes", "M": "dates", "m": "time spans", "V": "records", "O": "Python objects"}


def _image_stack(images: Any) -> torch.Tensor:
    """The images as a dense CPU tensor of real numbers, or one sentence saying what they are instead.

    A file may hold anything a tensor can be: strings, sparse or meta tensors (no pixel values at all), float8 or
    quantized values most operators do not support. Each is refused here rather than failing deep in preprocessing.
    """
    if isinstance(images, torch.Tensor):
        t = images
        if t.is_nested or t.layout != torch.strided:
            kind = "nested" if t.is_nested else str(t.layout).replace("torch.", "").replace("_", " ")
            raise DataError(f"Images must be a dense tensor, not a {kind} one; save images.to_dense() instead.")
        if t.is_meta:
            raise DataError("The images are a meta tensor: it has a shape but no pixel values; save the real tensor.")
        t = t.detach().cpu()
    else:
        arr = _as_numpy(images, "images")
        if arr.dtype.kind not in "biufc":
            raise DataError(f"Images must be numbers, not {_KIND_WORDS.get(arr.dtype.kind, str(arr.dtype))} ({arr.dtype}).")
        if arr.dtype.kind == "f" and arr.dtype.itemsize > 8:  # long double: torch has no such dtype
            arr = arr.astype(np.float64)
        t = torch.from_numpy(np.ascontiguousarray(arr.astype(np.int64) if arr.dtype.kind == "u" and arr.itemsize > 1 else arr))
    if t.is_complex():
        raise DataError("Images must be real-valued, not complex.")
    if t.dtype in (torch.uint16, torch.uint32, torch.uint64):  # few torch ops take them; 0-65535 is checked later
        t = t.to(torch.int64)
    if t.dtype not in _IMAGE_DTYPES:
        raise DataError(
            f"Images of dtype {str(t.dtype).replace('torch.', '')} cannot be audited; "
            "save them as uint8 (0-255) or float32 (0-1)."
        )
    if t.dtype == torch.bool:
        t = t.to(torch.uint8) * 255
    return t


def _read_tensor_file(path: Path) -> tuple[Any, Any, Any]:
    """(images, labels or None, class names or None) from an .npz/.npy/.pt/.pth file."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".npz", ".npy"):
            obj: Any = load_numpy(path)
        else:
            check_zip_file(path)  # torch reads a zip with its own reader: refuse one readers could read differently
            with warnings.catch_warnings():  # torch warns about sparse tensors on stderr; they are refused below
                warnings.simplefilter("ignore")
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = first_line(exc, "it holds Python objects")
        raise DataError(
            f"{path} holds more than tensors and was not unpickled ({first}); save a dict of tensors instead."
        ) from None
    except ValueError as exc:
        raise DataError(f"Cannot read {path}: {exc}.") from None
    except Exception as exc:  # zip/pickle/IO errors all mean the same to the user
        raise DataError(f"Cannot read {path}: {type(exc).__name__}: {exc}.") from None
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return obj, None, None
    if isinstance(obj, (tuple, list)) and 1 <= len(obj) <= 2:
        return obj[0], (obj[1] if len(obj) == 2 else None), None
    if isinstance(obj, Mapping):
        keys = {str(k).lower(): k for k in obj}

        def pick(cands: tuple[str, ...]) -> Any:
            for c in cands:
                if c in keys:
                    return obj[keys[c]]
            return None

        images = pick(IMAGE_KEYS)
        if images is None:
            arrays = [k for k, v in obj.items() if isinstance(v, (torch.Tensor, np.ndarray))]
            if len(arrays) == 1:
                images = obj[arrays[0]]
            else:
                found = ", ".join(map(str, obj)) or "none"
                raise DataError(f"{path} has no image array: looked for keys {', '.join(IMAGE_KEYS)}; found {found}.")
        return images, pick(LABEL_KEYS), pick(CLASS_KEYS)
    raise DataError(f"{path} holds a {type(obj).__name__}; expected a tensor, an (images, labels) pair or a dict of them.")


class TensorFile(DataKind):
    name = "tensors"
    detect_rank = 20
    needs_preprocessing = False
    takes_raw = True

    def recognises(self, path: Path, skipped: Skipped) -> bool:
        return path.is_file() and path.suffix.lower() in TENSOR_SUFFIXES

    def load(self, path: Path, request: Request) -> Loaded:
        images, labels, classes = _read_tensor_file(path)
        loaded = from_arrays(images, labels, request.preprocessing, request.raw, f"tensor file {path}")
        if classes is not None:
            loaded.classes = [c.decode() if isinstance(c, bytes) else str(c) for c in np.asarray(classes).tolist()]
        return loaded


def _four_d(images: Any, what: str, notes: list[str]) -> torch.Tensor:
    """The images as an (N, C, H, W) or (N, H, W, C) stack with at least one image of at least one pixel."""
    t = _image_stack(images)
    if t.ndim == 3:
        t = t[:, None]
        notes.append(f"3-D images {tuple(t.shape[:1]) + tuple(t.shape[2:])} taken as (N, H, W) one-channel images")
    if t.ndim != 4:
        raise DataError(f"Image tensors must be 4-D (N,C,H,W or N,H,W,C) or 3-D (N,H,W); got shape {tuple(t.shape)}.")
    if t.shape[0] == 0:
        raise DataError(f"The {what} holds no images.")
    if 0 in t.shape[1:]:
        raise DataError(f"The images of the {what} hold no pixels (shape {tuple(t.shape)}).")
    return t


def _scale(t: torch.Tensor, notes: list[str]) -> float | None:
    """What integer images other than uint8 are divided by to give 0-1 (None: uint8 or float, handled later)."""
    if t.dtype.is_floating_point:
        lo, hi = float(t.min()), float(t.max())
        if lo < -0.01 or hi > 1.01:
            notes.append(
                f"float images range from {lo:.3g} to {hi:.3g}, not 0-1; if they are already normalised, pass raw=True (--raw)"
            )
    elif t.dtype != torch.uint8:
        hi = int(t.max())
        if int(t.min()) < 0 or hi > 65535:
            raise DataError(f"Integer images must be 0-255 (uint8) or 0-65535; found values up to {hi}.")
        return 255.0 if hi <= 255 else 65535.0
    return None


def from_arrays(images: Any, labels: Any, prep: Preprocessing | None, raw: bool, what: str) -> Loaded:
    """A stack of images (and labels) in memory; ``what`` names it in messages and the description."""
    notes: list[str] = []
    t = _four_d(images, what, notes)
    want = prep.channels if prep is not None else None
    channels_last, c = _layout(tuple(t.shape), want)
    if channels_last:
        notes.append("images are channels-last (N,H,W,C): permuted to N,C,H,W")
    h, w = (t.shape[1], t.shape[2]) if channels_last else (t.shape[2], t.shape[3])
    if prep is not None and not raw:
        try:
            check_pixels((h, w), prep)
        except ValueError as exc:
            raise DataError(f"The images of the {what} cannot be resized: {exc}.") from None
    lab = _labels_array(labels, int(t.shape[0]), notes) if labels is not None else None
    scale: float | None = None
    if raw:
        out_size, out_c = (h, w), c
        if t.dtype == torch.uint8:
            notes.append("raw uint8 images used as they are (values 0-255, not scaled)")
        if prep is not None and (prep.size != (h, w) or prep.channels != c):
            notes.append(
                f"raw images are {c}x{h}x{w}, the preprocessing says {prep.channels}x{prep.size[0]}x{prep.size[1]}: used as given"
            )
    else:
        out_size = prep.size if prep is not None else (h, w)
        out_c = want if want is not None else c
        scale = _scale(t, notes)
        if c != out_c:
            notes.append(f"{c}-channel images converted to the model's {out_c} channels")
    return Loaded(
        TensorSource(t, channels_last=channels_last, raw=raw, scale=scale),
        f"{what}: {int(t.shape[0])} {'labelled' if lab is not None else 'unlabelled'} images",
        None if raw else prep,
        labels=None if lab is None else lab.tolist(),
        notes=notes,
        image_size=out_size,
        channels=out_c,
    )


def in_memory(source: Any, prep: Preprocessing | None, raw: bool) -> Loaded:
    """Data given as an object: a tensor or array of images, an ``(images, labels)`` pair or a torch Dataset."""
    if isinstance(source, (torch.Tensor, np.ndarray)):
        return from_arrays(source, None, prep, raw, "images in memory")
    if isinstance(source, (tuple, list)) and len(source) == 2 and not isinstance(source[0], (int, float)):
        return from_arrays(source[0], source[1], prep, raw, "images in memory")
    if hasattr(source, "__getitem__") and hasattr(source, "__len__"):
        return _torch_dataset(source, prep, raw)
    raise DataError(
        f"Cannot use a {type(source).__name__} as data; pass a path, a tensor of images, an (images, labels) pair "
        "or a torch Dataset."
    )


def _torch_dataset(source: Any, prep: Preprocessing | None, raw: bool) -> Loaded:
    n = len(source)
    if n == 0:
        raise DataError("The dataset holds no images.")
    src = DatasetSource(source, raw=raw)
    first, first_label = src.item(0)
    channels = prep.channels if (prep is not None and not raw) else None
    if channels is None:
        if isinstance(first, Image.Image):
            channels = len(first.getbands())
        else:
            shape = tuple(np.shape(first))
            channels = shape[0] if len(shape) == 3 and shape[0] in (1, 3, 4) else (shape[-1] if len(shape) == 3 else 1)
    x, _ = to_chw(first, None if raw else prep, channels, raw)
    targets = getattr(source, "targets", None)
    labels = None
    if targets is not None and len(targets) == n:
        labels = _labels_array(targets, n, [])
    return Loaded(
        src,
        f"{type(source).__name__} in memory: {n} images",
        None if raw else prep,
        labels=None if labels is None else labels.tolist(),
        has_labels=labels is not None or first_label >= 0,
        classes=list(getattr(source, "classes", None) or []) or None,
        image_size=(int(x.shape[-2]), int(x.shape[-1])),
        channels=int(x.shape[0]),
    )
