"""``load_data``: every kind of data source to an :class:`AuditDataset`.

Kinds: ``imagefolder`` (one sub-folder per class, labels from the sorted folder names as in torchvision's
ImageFolder, or from a class map), ``folder`` (loose images, unlabelled), ``cifar10`` (the python batches folder),
``tensors`` (``.npz``/``.npy``/``.pt``/``.pth``), ``hf`` (a Hugging Face dataset saved to disk, or parquet files:
:mod:`.hf_datasets`), ``webdataset`` (tar shards: :mod:`.webdataset_shards`) and, for objects, ``memory`` (a tensor,
an ``(images, labels)`` pair or a torch Dataset).
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import stat
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from shiftaudit.data import hf_datasets, webdataset_shards
from shiftaudit.data.cifar import find_batches_dir, load_cifar10_test
from shiftaudit.data.dataset import AuditDataset, DatasetSource, FileSource, TensorSource, to_chw
from shiftaudit.data.imagenet import BUILTIN as BUILTIN_CLASS_MAP
from shiftaudit.data.imagenet import imagenet_class_map, missing_class_map
from shiftaudit.data.preprocess import check_pixels, pil_mode_for
from shiftaudit.data.presets import Preprocessing
from shiftaudit.errors import DataError, UsageError, first_line
from shiftaudit.files import Refused, read_regular, reason
from shiftaudit.jsonfile import JsonInputError, load_json
from shiftaudit.limits import MAX_CLASSES, is_int
from shiftaudit.npyfiles import load_numpy
from shiftaudit.shifts.modes import check_canvas
from shiftaudit.ziparchive import check_zip_file

KINDS = ("imagefolder", "folder", "cifar10", "tensors", "hf", "webdataset")
NAMED_CLASSES = ("imagefolder", "hf", "webdataset")  # kinds whose class names a class map can map
TENSOR_SUFFIXES = (".npz", ".npy", ".pt", ".pth")
IMAGE_KEYS = ("images", "x", "data", "inputs", "imgs")
LABEL_KEYS = ("labels", "y", "targets", "label", "target")
CLASS_KEYS = ("classes", "class_names", "label_names")
MAX_CLASS_MAP_BYTES = 16 << 20  # ImageNet-21k's index file is under 1 MiB


# ---------------------------------------------------------------------------------------------------------------
# Finding files
# ---------------------------------------------------------------------------------------------------------------


def _is_image(name: str) -> bool:
    return not name.startswith(".") and has_file_allowed_extension(name, IMG_EXTENSIONS)


Skipped = list[tuple[str, str]]  # (path, why) of entries that could not be read: reported, and fatal with --strict


def _not_a_file(path: str) -> str | None:
    """Why an image-named entry cannot be read as an image file, or None when it is a regular file."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symbolic link loop"
        if isinstance(exc, FileNotFoundError):
            return "a broken symbolic link"
        return reason(exc)
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device, not an image file"
    if stat.S_ISFIFO(mode):
        return "a pipe, not an image file"  # reading it would block the decoder forever
    return "not a regular file"


def _images_under(folder: Path, recursive: bool = True, skipped: Skipped | None = None) -> list[Path]:
    """Image files under ``folder``, sorted; hidden files and folders (``.DS_Store``, ``._x.jpg``) are ignored.

    What cannot be read -- a sub-folder without permission, a link that loops or points at a device or pipe -- is
    appended to ``skipped`` with the reason, so the report counts it instead of silently auditing fewer images.
    """
    skipped = [] if skipped is None else skipped
    out: list[Path] = []
    if not recursive:
        for p in _entries(folder):
            if _is_image(p.name) and not p.is_dir():
                why = _not_a_file(str(p))
                (skipped.append((str(p), why)) if why else out.append(p))
        return sorted(out)
    seen = {os.path.realpath(folder)}  # folders walked so far: a symlink loop or a second link is not followed

    def unreadable(exc: OSError) -> None:
        skipped.append((str(exc.filename), f"unreadable folder: {reason(exc)}"))

    for root, dirs, files in os.walk(folder, followlinks=True, onerror=unreadable):
        here = os.path.realpath(root)
        keep = []
        for d in sorted(dirs):
            path = os.path.join(root, d)
            real = os.path.realpath(path)
            if d.startswith("."):
                continue
            if here == real or here.startswith(real + os.sep):
                skipped.append((path, "a link back to a folder above it (a loop)"))
            elif real in seen:
                skipped.append((path, "a second link to a folder already read"))
            else:
                seen.add(real)
                keep.append(d)
        dirs[:] = keep
        for f in sorted(files):
            if f.startswith("."):
                continue
            path = os.path.join(root, f)
            why = _not_a_file(path) if _is_image(f) or os.path.islink(path) else None
            if why:
                skipped.append((path, why))
            elif _is_image(f):
                out.append(Path(path))
    return out


def _entries(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError as exc:
        raise DataError(f"Cannot read data folder {folder}: {reason(exc)}.") from None


def _subfolders(folder: Path) -> list[Path]:
    return [p for p in _entries(folder) if p.is_dir() and not p.name.startswith(".")]


def _skipped_note(skipped: Skipped, root: Path) -> str:
    def rel(p: str) -> str:
        try:
            return os.path.relpath(p, root)
        except ValueError:
            return p

    shown = ", ".join(f"{rel(p)} ({why})" for p, why in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
    return f"{len(skipped)} unreadable entr{'ies' if len(skipped) != 1 else 'y'} skipped: {shown}"


def _check_skipped(skipped: Skipped, root: Path, strict: bool, notes: list[str]) -> None:
    """Count what could not be read in the notes; with --strict it is an error, like an unreadable image."""
    if not skipped:
        return
    if strict:
        path, why = skipped[0]
        raise DataError(f"Cannot read {path}: {why}.", hint="leave out --strict to skip unreadable images and folders")
    notes.append(_skipped_note(skipped, root))


def _no_images(folder: Path) -> DataError:
    exts = " ".join(IMG_EXTENSIONS)
    return DataError(f"No images found in {folder}; looked for {exts} files.")


def detect_kind(path: str | Path) -> str:
    """What kind of data source ``path`` is: imagefolder, folder, cifar10, tensors, hf or webdataset."""
    p = Path(path)
    if not p.exists() and webdataset_shards.is_shard_pattern(os.fspath(p)):
        return "webdataset"  # a brace pattern names files; which of them exist is checked when they are read
    if not p.exists():
        raise DataError(f"Data path {p} does not exist.")
    if not p.is_file() and not p.is_dir():
        raise DataError(f"Data path {p} is neither a regular file nor a folder (a pipe or device?).")
    if p.is_file():
        if p.suffix.lower() in TENSOR_SUFFIXES:
            return "tensors"
        if _is_image(p.name):
            return "folder"
        if webdataset_shards.is_shard_pattern(p.name):
            return "webdataset"
        if hf_datasets.parquet_files(p):
            return "hf"
        raise DataError(
            f"Cannot tell what kind of data {p} is; use a folder of images, a CIFAR-10 folder, a "
            f"{'/'.join(TENSOR_SUFFIXES)} tensor file, a Hugging Face dataset folder or .tar shards."
        )
    if find_batches_dir(p) is not None:
        return "cifar10"
    if hf_datasets.is_saved_dataset(p) or hf_datasets.parquet_files(p):
        return "hf"
    skipped: Skipped = []
    if any(_images_under(s, skipped=skipped) for s in _subfolders(p)):
        return "imagefolder"
    if _images_under(p, recursive=False, skipped=skipped):
        return "folder"
    if webdataset_shards.has_shards(p):
        return "webdataset"
    if skipped:
        raise DataError(f"No image in {p} could be read; {_skipped_note(skipped, p)}.")
    raise _no_images(p)


# ---------------------------------------------------------------------------------------------------------------
# Class maps
# ---------------------------------------------------------------------------------------------------------------


def read_class_map(
    class_map: str | Path | Mapping[str, Any] | Sequence[str], num_classes: int | None = None
) -> tuple[dict[str, int], dict[int, str]]:
    """Folder name -> class index, and index -> name, from a JSON file or object.

    Accepted: ``"imagenet"`` (the packaged ImageNet-1k index: WordNet ids and class names); ``{"n01440764": 0, ...}``;
    a list of names (index = position); and the Keras/ImageNet ``{"0": ["n01440764", "tench"], ...}`` index file,
    whose second entry names the class in figures. Every index must be a JSON integer (not ``true``, ``0.9`` or
    ``1e20``) below ``num_classes`` (the model's; :data:`~shiftaudit.limits.MAX_CLASSES` when unknown), because a
    list of classes is allocated up to the largest index.
    """
    if isinstance(class_map, str) and class_map == BUILTIN_CLASS_MAP:  # a file called imagenet: pass ./imagenet
        return imagenet_class_map()
    obj: Any = class_map
    if isinstance(class_map, (str, Path)):
        p = Path(class_map)
        try:
            obj = load_json(read_regular(p, MAX_CLASS_MAP_BYTES))
        except Refused as exc:
            raise DataError(f"Class map {p} {exc}.") from None
        except JsonInputError as exc:
            raise DataError(f"Class map {p} cannot be used: {exc}.") from None
    limit = num_classes if num_classes is not None else MAX_CLASSES
    whose = f"the model's {num_classes} classes" if num_classes is not None else f"the {MAX_CLASSES:,} allowed"
    mapping: dict[str, int] = {}
    display: dict[int, str] = {}

    def index(name: str, value: Any, from_key: bool = False) -> int:
        if from_key and isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:  # {"0": [...]}
            value = int(value)
        if not is_int(value):
            shown = (
                json.dumps(value)[:40] if isinstance(value, (bool, int, float, str)) or value is None else type(value).__name__
            )
            raise DataError(f"Class map entry {name[:60]!r} is {shown}, not a whole class index; use integers like 0, 1, 2.")
        if not 0 <= value < limit:
            shown = (
                str(value)
                if abs(value) < 10**18
                else f"a {len(str(abs(value))) if abs(value) < 10**4000 else 'huge'}-digit number"
            )
            raise DataError(f"Class map entry {name[:60]!r} is {shown}, outside 0..{limit - 1} ({whose}).")
        return value

    if isinstance(obj, Mapping):
        values = list(obj.values())
        if values and all(isinstance(v, (list, tuple)) and v for v in values):  # {"0": ["wnid", "name"]}
            mapping = {str(v[0]): index(str(v[0]), k, from_key=True) for k, v in obj.items()}  # JSON keys are strings
            display = {mapping[str(v[0])]: str(v[1]) for v in values if len(v) > 1}
        else:
            mapping = {str(k): index(str(k), v) for k, v in obj.items()}
    elif isinstance(obj, Sequence) and not isinstance(obj, (str, bytes)):
        if len(obj) > limit:
            raise DataError(f"The class map lists {len(obj)} names, more than {whose}.")
        mapping = {str(name): i for i, name in enumerate(obj)}
    else:
        raise DataError(
            f"Class map must map folder names to class indices (or list the names in index order); got a {type(obj).__name__}."
        )
    names: dict[int, str] = {}
    for name, idx in mapping.items():
        names[idx] = f"{names[idx]}/{name}" if idx in names else name
    return mapping, {**names, **display}


# ---------------------------------------------------------------------------------------------------------------
# Helpers for labels and tensors
# ---------------------------------------------------------------------------------------------------------------


def _as_numpy(x: Any, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    try:
        arr = np.asarray(x)
    except Exception:  # noqa: BLE001
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


_IMAGE_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16, torch.bfloat16,
                 torch.float32, torch.float64, torch.bool)
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


# ---------------------------------------------------------------------------------------------------------------
# load_data
# ---------------------------------------------------------------------------------------------------------------


def load_data(
    source: Any,
    *,
    preprocessing: Preprocessing | None = None,
    kind: str = "auto",
    class_map: str | Path | Mapping[str, Any] | Sequence[str] | None = None,
    limit: int | None = None,
    seed: int = 0,
    strict: bool = False,
    raw: bool = False,
    num_classes: int | None = None,
    canvas_margin: int | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
) -> AuditDataset:
    """Load images (and labels when the source has them) for an audit.

    ``source``: a path (ImageFolder tree, folder of images, CIFAR-10 python folder, .npz/.npy/.pt/.pth file, a
    Hugging Face dataset saved to disk or parquet files, WebDataset ``.tar`` shards or a brace pattern naming them,
    ``train-{000..099}.tar``), or in memory a tensor/array of images, an ``(images, labels)`` pair, or a torch
    Dataset of ``(image, label)``.
    ``preprocessing``: resize, centre crop and normalisation for images and non-raw tensors (required for image
    files). ``raw``: tensors are already the network input: used as they are. ``class_map``: folder name -> model
    class index for ImageFolder trees (a JSON file or object, or ``"imagenet"`` for the packaged ImageNet-1k index);
    a folder missing from the map is an error (most likely a wrong map). ImageNet folders (WordNet ids or class
    names) for a 1000-class model without a map are refused: their sorted positions are not the model's indices.
    ``limit``: audit a random subset of that many images, drawn with ``seed`` and kept in order. ``strict``: an
    unreadable image file raises instead of being skipped. ``num_classes``: check that labels fit the model.
    ``canvas_margin``: for crop-mode audits (``shift_mode="crop"``), preprocess every image to a canvas ``R`` px
    larger than the crop size on every side (resize the shorter side, centre-crop ``size + 2R``); the model then
    sees ``size`` crops of it. Ignored for raw tensors and data without preprocessing, which crop mode takes as
    canvases as they are. ``image_column``/``label_column``: the columns of a Hugging Face dataset (default: its
    ``Image`` and ``ClassLabel`` features); ``ClassLabel`` names, and ``.cls`` label names in shards, are class names
    as sub-folder names are, and ``class_map`` maps them the same way.
    """
    if kind not in ("auto", *KINDS, "memory"):
        raise DataError(f"Unknown data kind {kind!r}; use auto, {', '.join(KINDS)}.")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be at least 1, got {limit}.")
    if preprocessing is not None and pil_mode_for(preprocessing.channels) is None and not raw:
        raise DataError(
            f"Images cannot be prepared for a model with {preprocessing.channels} input channels; pass tensors with raw=True."
        )
    canvas = None
    if canvas_margin and preprocessing is not None and not raw:
        if canvas_margin < 0:
            raise UsageError(f"The crop canvas margin must be >= 0, got {canvas_margin}.")
        canvas = int(canvas_margin)
        size = preprocessing.size
        check_canvas(size, canvas, preprocessing.channels)
        preprocessing = replace(preprocessing, size=(size[0] + 2 * canvas, size[1] + 2 * canvas))
    if isinstance(source, (str, bytes)) or hasattr(source, "__fspath__"):
        path = Path(os.fsdecode(source))
        if not path.exists() and not webdataset_shards.is_shard_pattern(os.fspath(path)):
            raise DataError(f"Data path {path} does not exist.")
        found = detect_kind(path) if kind in ("auto", "memory") else kind
        if class_map is not None and found not in NAMED_CLASSES:
            raise UsageError(
                f"A class map applies to ImageFolder trees (one sub-folder per class), Hugging Face datasets and shards, "
                f"not to {found} data."
            )
        if (image_column is not None or label_column is not None) and found != "hf":
            flag = "--image-column" if image_column is not None else "--label-column"
            raise UsageError(f"{flag} names a column of a Hugging Face dataset, not of {found} data.")
        if found in ("imagefolder", "folder", "cifar10", "hf", "webdataset") and raw:
            raise UsageError("--raw applies to tensor files (.npz/.pt); image files are always decoded and preprocessed.")
        if found in ("imagefolder", "folder", "hf", "webdataset") and preprocessing is None:
            raise UsageError("Image files need a preprocessing (crop size, mean, std), e.g. presets.get_preset('imagenet').")
        if found == "imagefolder":
            assert preprocessing is not None  # refused above
            ds = _image_folder(path, preprocessing, class_map, strict, num_classes)
        elif found == "folder":
            assert preprocessing is not None
            ds = _flat_folder(path, preprocessing, strict)
        elif found == "hf":
            assert preprocessing is not None
            ds = hf_datasets.load_hf(path, preprocessing, class_map, strict, num_classes, image_column, label_column)
        elif found == "webdataset":
            assert preprocessing is not None
            ds = webdataset_shards.load_shards(path, preprocessing, class_map, strict, num_classes)
        elif found == "cifar10":
            ds = _cifar10(path, preprocessing)
        else:
            ds = _tensor_file(path, preprocessing, raw)
    else:
        if class_map is not None:
            raise UsageError("A class map applies to ImageFolder trees, not to data in memory.")
        ds = _in_memory(source, preprocessing, raw)
    if class_map is None and ds.kind in NAMED_CLASSES and ds.classes:
        problem = missing_class_map(ds.classes, num_classes)
        if problem:
            raise DataError(problem)
    ds.strict = strict  # tensor data too: an image with NaN pixels stops a --strict run
    _check_labels(ds, num_classes)
    if canvas is not None and ds.preprocessing is not None:
        ds.canvas_margin = canvas
        ch, cw = ds.image_size
        ds.notes = ds._notes + [
            f"crop mode: images preprocessed to {ch}x{cw} canvases, the model sees {ch - 2 * canvas}x{cw - 2 * canvas} "
            f"crops of them (margin {canvas} px)"
        ]
    return _subset(ds, limit, seed) if limit is not None and limit < len(ds) else ds


def _check_labels(ds: AuditDataset, num_classes: int | None) -> None:
    if num_classes is None or not ds.labels:
        return
    top = max(ds.labels)
    if top >= num_classes:
        fix = (
            "pass --class-map to map folder names to the model's class indices"
            if ds.kind == "imagefolder"
            else "pass --class-map to map the class names to the model's class indices"
            if ds.kind in NAMED_CLASSES and ds.classes
            else "the labels must be the model's class indices"
        )
        raise DataError(f"Labels go up to {top} but the model has {num_classes} classes; {fix}.")


def _subset(ds: AuditDataset, limit: int, seed: int) -> AuditDataset:
    """A seeded random subset, kept in the original order (so reports stay comparable across runs)."""
    n = len(ds)
    pick = np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))
    ds.index = ds.index[pick]
    if ds.labels is not None:
        ds.labels = [ds.labels[i] for i in pick]
    ds._flags = np.zeros(limit, dtype=np.uint8)
    ds._seen = np.zeros(limit, dtype=bool)
    ds.description += f" (random subset of {limit} of {n}, seed {seed})"
    return ds


def _image_folder(path: Path, prep: Preprocessing, class_map: Any, strict: bool, num_classes: int | None = None) -> AuditDataset:
    if not path.is_dir():
        raise DataError(f"{path} is not a folder; an ImageFolder tree is a folder with one sub-folder per class.")
    notes: list[str] = []
    skipped: Skipped = []
    subs = _subfolders(path)
    per_class = {s.name: _images_under(s, skipped=skipped) for s in subs}
    if not any(per_class.values()):
        if skipped:
            raise DataError(f"No image in {path} could be read; {_skipped_note(skipped, path)}.")
        if _images_under(path, recursive=False):
            raise DataError(
                f"{path} has no sub-folders with images; an ImageFolder tree needs one sub-folder per class "
                "(use --data-kind folder for unlabelled images)."
            )
        raise _no_images(path)
    loose = _images_under(path, recursive=False)
    if loose:
        notes.append(
            f"{len(loose)} loose image{'s' if len(loose) != 1 else ''} at the top of {path} ignored "
            "(labels come from sub-folders)"
        )
    _check_skipped(skipped, path, strict, notes)
    empty = [name for name, files in per_class.items() if not files]
    if class_map is not None:
        mapping, names = read_class_map(class_map, num_classes)
        unknown = [name for name in per_class if name not in mapping and per_class[name]]
        if unknown:
            shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
            raise DataError(
                f"{len(unknown)} of {len(subs)} sub-folders of {path} are not in the class map: {shown}; "
                "every class folder needs an entry."
            )
        to_idx = mapping
        classes = [names.get(i, str(i)) for i in range(max(names) + 1)] if names else []
    else:
        to_idx = {name: i for i, name in enumerate(per_class)}  # sorted, like torchvision's ImageFolder
        classes = list(per_class)
        if empty:
            notes.append(
                f"sub-folder{'s' if len(empty) != 1 else ''} with no images (kept as classes so labels stay in order): "
                f"{', '.join(empty[:5])}"
            )
    files: list[Path] = []
    labels: list[int] = []
    for name, imgs in per_class.items():
        files.extend(imgs)
        labels.extend([to_idx[name]] * len(imgs))
    n_classes = sum(1 for v in per_class.values() if v)
    return AuditDataset(
        FileSource(files, root=path),
        labels=labels,
        classes=classes,
        kind="imagefolder",
        description=f"ImageFolder {path}: {len(files)} images, {n_classes} classes",
        image_size=prep.size,
        channels=prep.channels,
        preprocessing=prep,
        notes=notes,
        strict=strict,
    )


def _flat_folder(path: Path, prep: Preprocessing, strict: bool) -> AuditDataset:
    notes: list[str] = []
    skipped: Skipped = []
    if path.is_file():
        files = [path]
    else:
        files = _images_under(path, recursive=False, skipped=skipped)
        if not files:  # no loose images: the images of the whole tree, unlabelled
            skipped.clear()
            files = _images_under(path, skipped=skipped)
        if not files:
            if skipped:
                raise DataError(f"No image in {path} could be read; {_skipped_note(skipped, path)}.")
            raise _no_images(path)
        _check_skipped(skipped, path, strict, notes)
    return AuditDataset(
        FileSource(files, root=path if path.is_dir() else path.parent),
        labels=None,
        kind="folder",
        description=f"image folder {path}: {len(files)} unlabelled images" if path.is_dir() else f"image {path}",
        image_size=prep.size,
        channels=prep.channels,
        preprocessing=prep,
        notes=notes,
        strict=strict,
    )


def _cifar10(path: Path, prep: Preprocessing | None) -> AuditDataset:
    images, labels, names, notes = load_cifar10_test(path)
    channels = prep.channels if prep is not None else 3
    if channels != 3:
        notes.append(f"CIFAR-10 RGB images converted to {channels} channel{'s' if channels != 1 else ''}")
    src = TensorSource(torch.from_numpy(images), channels_last=True, raw=False, scale=None)
    return AuditDataset(
        src,
        labels=labels.tolist(),
        classes=names or None,
        kind="cifar10",
        description=f"CIFAR-10 test set {path}: {len(images)} images, {len(names) or len(set(labels.tolist()))} classes",
        image_size=prep.size if prep is not None else (32, 32),
        channels=channels,
        preprocessing=prep,
        notes=notes,
    )


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
    except Exception as exc:  # noqa: BLE001 - zip/pickle/IO errors all mean the same to the user
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


def _tensor_file(path: Path, prep: Preprocessing | None, raw: bool) -> AuditDataset:
    images, labels, classes = _read_tensor_file(path)
    ds = _from_arrays(images, labels, prep, raw, kind="tensors", what=f"tensor file {path}")
    if classes is not None:
        ds.classes = [c.decode() if isinstance(c, bytes) else str(c) for c in np.asarray(classes).tolist()]
    return ds


def _from_arrays(images: Any, labels: Any, prep: Preprocessing | None, raw: bool, *, kind: str, what: str) -> AuditDataset:
    notes: list[str] = []
    t = _image_stack(images)
    if t.ndim == 3:
        t = t[:, None]
        notes.append(f"3-D images {tuple(t.shape[:1]) + tuple(t.shape[2:])} taken as (N, H, W) one-channel images")
    if t.ndim != 4:
        raise DataError(
            f"Image tensors must be 4-D (N,C,H,W or N,H,W,C) or 3-D (N,H,W); got shape {tuple(t.shape)}."
        )
    if t.shape[0] == 0:
        raise DataError(f"The {what} holds no images.")
    if 0 in t.shape[1:]:
        raise DataError(f"The images of the {what} hold no pixels (shape {tuple(t.shape)}).")
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
        if t.dtype.is_floating_point:
            lo, hi = float(t.min()), float(t.max())
            if lo < -0.01 or hi > 1.01:
                notes.append(
                    f"float images range from {lo:.3g} to {hi:.3g}, not 0-1; if they are already normalised, "
                    "pass raw=True (--raw)"
                )
        elif t.dtype != torch.uint8:
            hi = int(t.max())
            if int(t.min()) < 0 or hi > 65535:
                raise DataError(f"Integer images must be 0-255 (uint8) or 0-65535; found values up to {hi}.")
            scale = 255.0 if hi <= 255 else 65535.0
        if c != out_c:
            notes.append(f"{c}-channel images converted to the model's {out_c} channels")
    src = TensorSource(t, channels_last=channels_last, raw=raw, scale=scale)
    n = int(t.shape[0])
    return AuditDataset(
        src,
        labels=None if lab is None else lab.tolist(),
        kind=kind,
        description=f"{what}: {n} {'labelled' if lab is not None else 'unlabelled'} images",
        image_size=out_size,
        channels=out_c,
        preprocessing=None if raw else prep,
        notes=notes,
    )


def _in_memory(source: Any, prep: Preprocessing | None, raw: bool) -> AuditDataset:
    if isinstance(source, (torch.Tensor, np.ndarray)):
        return _from_arrays(source, None, prep, raw, kind="memory", what="images in memory")
    if isinstance(source, (tuple, list)) and len(source) == 2 and not isinstance(source[0], (int, float)):
        return _from_arrays(source[0], source[1], prep, raw, kind="memory", what="images in memory")
    if hasattr(source, "__getitem__") and hasattr(source, "__len__"):
        return _torch_dataset(source, prep, raw)
    raise DataError(
        f"Cannot use a {type(source).__name__} as data; pass a path, a tensor of images, an (images, labels) pair "
        "or a torch Dataset."
    )


def _torch_dataset(source: Any, prep: Preprocessing | None, raw: bool) -> AuditDataset:
    n = len(source)
    if n == 0:
        raise DataError("The dataset holds no images.")
    src = DatasetSource(source, raw=raw)
    first, first_label = src.item(0)
    channels = prep.channels if (prep is not None and not raw) else None
    if channels is None:
        from PIL import Image

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
    return AuditDataset(
        src,
        labels=None if labels is None else labels.tolist(),
        has_labels=labels is not None or first_label >= 0,
        classes=list(getattr(source, "classes", None) or []) or None,
        kind="memory",
        description=f"{type(source).__name__} in memory: {n} images",
        image_size=(int(x.shape[-2]), int(x.shape[-1])),
        channels=int(x.shape[0]),
        preprocessing=None if raw else prep,
    )
