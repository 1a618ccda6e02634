"""``load_data``: every kind of data source to an :class:`AuditDataset`.

Kinds: ``imagefolder`` (one sub-folder per class, labels from the sorted folder names as in torchvision's
ImageFolder, or from a class map), ``folder`` (loose images, unlabelled), ``cifar10`` (the python batches folder),
``tensors`` (``.npz``/``.npy``/``.pt``/``.pth``) and, for objects, ``memory`` (a tensor, an ``(images, labels)``
pair or a torch Dataset).
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import replace
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from ..errors import DataError, UsageError, first_line
from ..presets import Preprocessing
from .cifar import find_batches_dir, load_cifar10_test
from .dataset import AuditDataset, DatasetSource, FileSource, TensorSource, to_chw
from .imagenet import BUILTIN as BUILTIN_CLASS_MAP
from .imagenet import imagenet_class_map, missing_class_map
from .preprocess import pil_mode_for

KINDS = ("imagefolder", "folder", "cifar10", "tensors")
TENSOR_SUFFIXES = (".npz", ".npy", ".pt", ".pth")
IMAGE_KEYS = ("images", "x", "data", "inputs", "imgs")
LABEL_KEYS = ("labels", "y", "targets", "label", "target")
CLASS_KEYS = ("classes", "class_names", "label_names")


# ---------------------------------------------------------------------------------------------------------------
# Finding files
# ---------------------------------------------------------------------------------------------------------------


def _is_image(name: str) -> bool:
    return not name.startswith(".") and has_file_allowed_extension(name, IMG_EXTENSIONS)


def _images_under(folder: Path, recursive: bool = True) -> list[Path]:
    """Image files under ``folder``, sorted; hidden files and folders (``.DS_Store``, ``._x.jpg``) are ignored."""
    if not recursive:
        return sorted(p for p in folder.iterdir() if p.is_file() and _is_image(p.name))
    out: list[Path] = []
    seen = {os.path.realpath(folder)}  # folders walked so far: a symlink loop or a second link is not followed
    for root, dirs, files in os.walk(folder, followlinks=True):
        here = os.path.realpath(root)
        keep = []
        for d in sorted(dirs):
            real = os.path.realpath(os.path.join(root, d))
            if d.startswith(".") or real in seen or here.startswith(real + os.sep):
                continue
            seen.add(real)
            keep.append(d)
        dirs[:] = keep
        # regular files only: a FIFO named x.png would block the decoder forever
        out.extend(Path(root) / f for f in sorted(files) if _is_image(f) and (Path(root) / f).is_file())
    return out


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _no_images(folder: Path) -> DataError:
    exts = " ".join(IMG_EXTENSIONS)
    return DataError(f"No images found in {folder}; looked for {exts} files.")


def detect_kind(path: str | Path) -> str:
    """What kind of data source ``path`` is: imagefolder, folder, cifar10 or tensors."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"Data path {p} does not exist.")
    if not p.is_file() and not p.is_dir():
        raise DataError(f"Data path {p} is neither a regular file nor a folder (a pipe or device?).")
    if p.is_file():
        if p.suffix.lower() in TENSOR_SUFFIXES:
            return "tensors"
        if _is_image(p.name):
            return "folder"
        raise DataError(
            f"Cannot tell what kind of data {p} is; use a folder of images, a CIFAR-10 folder or a "
            f"{'/'.join(TENSOR_SUFFIXES)} tensor file."
        )
    if find_batches_dir(p) is not None:
        return "cifar10"
    subs = _subfolders(p)
    if any(_images_under(s) for s in subs):
        return "imagefolder"
    if _images_under(p, recursive=False):
        return "folder"
    raise _no_images(p)


# ---------------------------------------------------------------------------------------------------------------
# Class maps
# ---------------------------------------------------------------------------------------------------------------


def read_class_map(class_map: str | Path | Mapping[str, Any] | Sequence[str]) -> tuple[dict[str, int], dict[int, str]]:
    """Folder name -> class index, and index -> name, from a JSON file or object.

    Accepted: ``"imagenet"`` (the packaged ImageNet-1k index: WordNet ids and class names); ``{"n01440764": 0, ...}``;
    a list of names (index = position); and the Keras/ImageNet ``{"0": ["n01440764", "tench"], ...}`` index file,
    whose second entry names the class in figures.
    """
    if isinstance(class_map, str) and class_map == BUILTIN_CLASS_MAP:  # a file called imagenet: pass ./imagenet
        return imagenet_class_map()
    obj: Any = class_map
    if isinstance(class_map, (str, Path)):
        p = Path(class_map)
        if not p.is_file():
            raise DataError(f"Class map {p} does not exist.")
        try:
            obj = json.loads(p.read_text(encoding="utf-8"))
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            why = "it is nested too deeply" if isinstance(exc, RecursionError) else str(exc).rstrip(".")
            raise DataError(f"Class map {p} is not valid JSON ({why}).") from None
        except OSError as exc:
            raise DataError(f"Cannot read class map {p}: {exc.strerror or exc}.") from None
    mapping: dict[str, int] = {}
    display: dict[int, str] = {}
    try:
        if isinstance(obj, Mapping):
            values = list(obj.values())
            if values and all(isinstance(v, (list, tuple)) and v for v in values):  # {"0": ["wnid", "name"]}
                mapping = {str(v[0]): int(k) for k, v in obj.items()}
                display = {int(k): str(v[1]) for k, v in obj.items() if len(v) > 1}
            else:
                mapping = {str(k): int(v) for k, v in obj.items()}
        elif isinstance(obj, Sequence) and not isinstance(obj, (str, bytes)):
            mapping = {str(name): i for i, name in enumerate(obj)}
        else:
            raise TypeError(type(obj).__name__)
    except (TypeError, ValueError) as exc:
        raise DataError(
            f"Class map must map folder names to class indices (or list the names in index order); got {exc}."
        ) from None
    if any(v < 0 for v in mapping.values()):
        raise DataError("Class map indices must be non-negative.")
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


def _image_stack(images: Any) -> torch.Tensor:
    t = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(_as_numpy(images, "images")))
    if t.dtype == torch.bool:
        t = t.to(torch.uint8) * 255
    if t.is_complex():
        raise DataError("Images must be real-valued, not complex.")
    return t.detach().cpu()


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
) -> AuditDataset:
    """Load images (and labels when the source has them) for an audit.

    ``source``: a path (ImageFolder tree, folder of images, CIFAR-10 python folder, .npz/.npy/.pt/.pth file), or in
    memory a tensor/array of images, an ``(images, labels)`` pair, or a torch Dataset of ``(image, label)``.
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
    canvases as they are.
    """
    if kind not in ("auto", *KINDS, "memory"):
        raise DataError(f"Unknown data kind {kind!r}; use auto, {', '.join(KINDS)}.")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be at least 1, got {limit}.")
    if preprocessing is not None and pil_mode_for(preprocessing.channels) is None and not raw:
        raise DataError(f"Images cannot be prepared for a model with {preprocessing.channels} input channels; pass tensors with raw=True.")
    canvas = None
    if canvas_margin and preprocessing is not None and not raw:
        if canvas_margin < 0:
            raise UsageError(f"The crop canvas margin must be >= 0, got {canvas_margin}.")
        canvas = int(canvas_margin)
        size = preprocessing.size
        preprocessing = replace(preprocessing, size=(size[0] + 2 * canvas, size[1] + 2 * canvas))
    if isinstance(source, (str, bytes)) or hasattr(source, "__fspath__"):
        path = Path(os.fsdecode(source))
        if not path.exists():
            raise DataError(f"Data path {path} does not exist.")
        found = detect_kind(path) if kind in ("auto", "memory") else kind
        if class_map is not None and found != "imagefolder":
            raise UsageError(f"A class map applies to ImageFolder trees (one sub-folder per class), not to {found} data.")
        if found in ("imagefolder", "folder", "cifar10") and raw:
            raise UsageError("--raw applies to tensor files (.npz/.pt); image files are always decoded and preprocessed.")
        if found in ("imagefolder", "folder") and preprocessing is None:
            raise UsageError("Image files need a preprocessing (crop size, mean, std), e.g. presets.get_preset('imagenet').")
        if found == "imagefolder":
            ds = _image_folder(path, preprocessing, class_map, strict)  # type: ignore[arg-type]
        elif found == "folder":
            ds = _flat_folder(path, preprocessing, strict)  # type: ignore[arg-type]
        elif found == "cifar10":
            ds = _cifar10(path, preprocessing)
        else:
            ds = _tensor_file(path, preprocessing, raw)
    else:
        if class_map is not None:
            raise UsageError("A class map applies to ImageFolder trees, not to data in memory.")
        ds = _in_memory(source, preprocessing, raw)
    if class_map is None and ds.kind == "imagefolder" and ds.classes:
        problem = missing_class_map(ds.classes, num_classes)
        if problem:
            raise DataError(problem)
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


def _image_folder(path: Path, prep: Preprocessing, class_map: Any, strict: bool) -> AuditDataset:
    if not path.is_dir():
        raise DataError(f"{path} is not a folder; an ImageFolder tree is a folder with one sub-folder per class.")
    notes: list[str] = []
    subs = _subfolders(path)
    per_class = {s.name: _images_under(s) for s in subs}
    if not any(per_class.values()):
        if _images_under(path, recursive=False):
            raise DataError(
                f"{path} has no sub-folders with images; an ImageFolder tree needs one sub-folder per class "
                "(use --data-kind folder for unlabelled images)."
            )
        raise _no_images(path)
    loose = _images_under(path, recursive=False)
    if loose:
        notes.append(f"{len(loose)} loose image{'s' if len(loose) != 1 else ''} at the top of {path} ignored (labels come from sub-folders)")
    empty = [name for name, files in per_class.items() if not files]
    if class_map is not None:
        mapping, names = read_class_map(class_map)
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
            notes.append(f"sub-folder{'s' if len(empty) != 1 else ''} with no images (kept as classes so labels stay in order): {', '.join(empty[:5])}")
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
    if path.is_file():
        files = [path]
    else:
        files = _images_under(path, recursive=False) or _images_under(path)
        if not files:
            raise _no_images(path)
    return AuditDataset(
        FileSource(files, root=path if path.is_dir() else path.parent),
        labels=None,
        kind="folder",
        description=f"image folder {path}: {len(files)} unlabelled images" if path.is_dir() else f"image {path}",
        image_size=prep.size,
        channels=prep.channels,
        preprocessing=prep,
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
            loaded = np.load(path, allow_pickle=False)
            obj: Any = loaded if suffix == ".npy" else {k: loaded[k] for k in loaded.files}
        else:
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
    want = prep.channels if prep is not None else None
    channels_last, c = _layout(tuple(t.shape), want)
    if channels_last:
        notes.append("images are channels-last (N,H,W,C): permuted to N,C,H,W")
    h, w = (t.shape[1], t.shape[2]) if channels_last else (t.shape[2], t.shape[3])
    lab = _labels_array(labels, int(t.shape[0]), notes) if labels is not None else None
    scale: float | None = None
    if raw:
        out_size, out_c = (h, w), c
        if t.dtype == torch.uint8:
            notes.append("raw uint8 images used as they are (values 0-255, not scaled)")
        if prep is not None and (prep.size != (h, w) or prep.channels != c):
            notes.append(f"raw images are {c}x{h}x{w}, the preprocessing says {prep.channels}x{prep.size[0]}x{prep.size[1]}: used as given")
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
