"""``load_data``: any kind of data source to an :class:`AuditDataset`, through the registry of kinds (:mod:`.kinds`).

Kinds, in the order ``--data-kind`` lists them: ``imagefolder`` (one sub-folder per class, labels from the sorted
folder names as in torchvision's ImageFolder, or from a class map) and ``folder`` (loose images, unlabelled), both
here; ``cifar10`` (the python batches folder: :mod:`.cifar`), ``tensors`` (``.npz``/``.npy``/``.pt``/``.pth``:
:mod:`.tensors`), ``hf`` (a Hugging Face dataset saved to disk, or parquet files: :mod:`.hf_datasets`) and
``webdataset`` (tar shards: :mod:`.webdataset_shards`). Objects (a tensor, an ``(images, labels)`` pair or a torch
Dataset) are the ``memory`` kind (:func:`.tensors.in_memory`).
"""

from __future__ import annotations

import errno
import functools
import os
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

from shiftaudit.data.cifar import Cifar10
from shiftaudit.data.classes import ClassMap, read_class_map
from shiftaudit.data.dataset import AuditDataset, FileSource
from shiftaudit.data.hf_datasets import HfDataset
from shiftaudit.data.kinds import (
    DataKind,
    Loaded,
    Request,
    Skipped,
    data_kind_names,
    data_kinds,
    get_data_kind,
    make_dataset,
    register_data_kind,
)
from shiftaudit.data.preprocess import pil_mode_for
from shiftaudit.data.presets import Preprocessing
from shiftaudit.data.tensors import TENSOR_SUFFIXES, TensorFile, in_memory
from shiftaudit.data.webdataset_shards import WebDataset
from shiftaudit.errors import DataError, UsageError
from shiftaudit.files import reason
from shiftaudit.shifts.modes import check_canvas

# ---------------------------------------------------------------------------------------------------------------
# Finding image files
# ---------------------------------------------------------------------------------------------------------------


@functools.cache
def _image_extensions() -> tuple[str, ...]:
    """The suffixes torchvision's ImageFolder reads (imported when first needed, as in :mod:`.preprocess`)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return tuple(IMG_EXTENSIONS)


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(_image_extensions())


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
    skipped = Skipped() if skipped is None else skipped
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


def _no_images(folder: Path) -> DataError:
    exts = " ".join(_image_extensions())
    return DataError(f"No images found in {folder}; looked for {exts} files.")


# ---------------------------------------------------------------------------------------------------------------
# Folders of image files
# ---------------------------------------------------------------------------------------------------------------


class ImageFolder(DataKind):
    name = "imagefolder"
    detect_rank = 40
    takes_class_map = True
    class_names = "folder names"

    def recognises(self, path: Path, skipped: Skipped) -> bool:
        return path.is_dir() and any(_images_under(s, skipped=skipped) for s in _subfolders(path))

    def load(self, path: Path, request: Request) -> Loaded:
        if not path.is_dir():
            raise DataError(f"{path} is not a folder; an ImageFolder tree is a folder with one sub-folder per class.")
        notes: list[str] = []
        skipped = Skipped(root=path)
        per_class = {s.name: _images_under(s, skipped=skipped) for s in _subfolders(path)}
        if not any(per_class.values()):
            if skipped:
                raise DataError(f"No image in {path} could be read; {skipped.note()}.")
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
        skipped.check(request.strict, notes)
        to_idx, classes = _class_indices(path, per_class, request, notes)
        files = [f for imgs in per_class.values() for f in imgs]
        labels = [to_idx[name] for name, imgs in per_class.items() for _ in imgs]
        n_classes = sum(1 for v in per_class.values() if v)
        return Loaded(
            FileSource(files, root=path),
            f"ImageFolder {path}: {len(files)} images, {n_classes} classes",
            request.prep,
            labels,
            classes,
            notes,
        )


def _class_indices(
    path: Path, per_class: dict[str, list[Path]], request: Request, notes: list[str]
) -> tuple[dict[str, int], list[str]]:
    """(sub-folder name -> label, class names by label): sorted positions, as torchvision's ImageFolder, or the
    class map's indices."""
    if request.class_map is None:
        empty = [name for name, files in per_class.items() if not files]
        if empty:
            notes.append(
                f"sub-folder{'s' if len(empty) != 1 else ''} with no images (kept as classes so labels stay in order): "
                f"{', '.join(empty[:5])}"
            )
        return {name: i for i, name in enumerate(per_class)}, list(per_class)
    mapping, names = read_class_map(request.class_map, request.num_classes)
    unknown = [name for name in per_class if name not in mapping and per_class[name]]
    if unknown:
        shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise DataError(
            f"{len(unknown)} of {len(per_class)} sub-folders of {path} are not in the class map: {shown}; "
            "every class folder needs an entry."
        )
    return mapping, [names.get(i, str(i)) for i in range(max(names) + 1)] if names else []


class Folder(DataKind):
    name = "folder"
    detect_rank = 50

    def recognises(self, path: Path, skipped: Skipped) -> bool:
        if path.is_file():
            return _is_image(path.name)
        return path.is_dir() and bool(_images_under(path, recursive=False, skipped=skipped))

    def load(self, path: Path, request: Request) -> Loaded:
        notes: list[str] = []
        skipped = Skipped(root=path)
        if path.is_file():
            files = [path]
        else:
            files = _images_under(path, recursive=False, skipped=skipped)
            if not files:  # no loose images: the images of the whole tree, unlabelled
                skipped.clear()
                files = _images_under(path, skipped=skipped)
            if not files:
                if skipped:
                    raise DataError(f"No image in {path} could be read; {skipped.note()}.")
                raise _no_images(path)
            skipped.check(request.strict, notes)
        return Loaded(
            FileSource(files, root=path if path.is_dir() else path.parent),
            f"image folder {path}: {len(files)} unlabelled images" if path.is_dir() else f"image {path}",
            request.prep,
            notes=notes,
        )


for _kind in (ImageFolder(), Folder(), Cifar10(), TensorFile(), HfDataset(), WebDataset()):
    register_data_kind(_kind)
KINDS = data_kind_names()  # the built-in kinds; data_kind_names() has plug-ins registered later too


# ---------------------------------------------------------------------------------------------------------------
# load_data
# ---------------------------------------------------------------------------------------------------------------


def detect_kind(path: str | Path) -> str:
    """What kind of data source ``path`` is: the first registered kind, in ``detect_rank`` order, that recognises it."""
    p = Path(path)
    if p.exists() and not p.is_file() and not p.is_dir():
        raise DataError(f"Data path {p} is neither a regular file nor a folder (a pipe or device?).")
    skipped = Skipped(root=p)
    for kind in data_kinds():
        if kind.recognises(p, skipped):
            return kind.name
    if not p.exists():
        raise DataError(f"Data path {p} does not exist.")
    if p.is_file():
        raise DataError(
            f"Cannot tell what kind of data {p} is; use a folder of images, a CIFAR-10 folder, a "
            f"{'/'.join(TENSOR_SUFFIXES)} tensor file, a Hugging Face dataset folder or .tar shards."
        )
    if skipped:
        raise DataError(f"No image in {p} could be read; {skipped.note()}.")
    raise _no_images(p)


def load_data(
    source: Any,
    *,
    preprocessing: Preprocessing | None = None,
    kind: str = "auto",
    class_map: ClassMap | None = None,
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
    request = Request(preprocessing, class_map, strict, raw, num_classes, image_column, label_column)
    if kind not in ("auto", "memory"):
        get_data_kind(kind)  # an unknown name is refused before anything is read
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
        request = replace(request, preprocessing=replace(preprocessing, size=(size[0] + 2 * canvas, size[1] + 2 * canvas)))
    if isinstance(source, (str, bytes)) or hasattr(source, "__fspath__"):
        path = Path(os.fsdecode(source))
        found = _path_kind(path, kind, request)
        return make_dataset(found.load(path, request), found, request, canvas, limit, seed)
    if class_map is not None:
        raise UsageError("A class map applies to ImageFolder trees, not to data in memory.")
    return make_dataset(in_memory(source, request.preprocessing, raw), None, request, canvas, limit, seed)


def _path_kind(path: Path, kind: str, request: Request) -> DataKind:
    """The kind of data at ``path`` (``kind``, or detected), once it is known to take what was asked."""
    if not path.exists() and not any(k.names_files(os.fspath(path)) for k in data_kinds()):
        raise DataError(f"Data path {path} does not exist.")
    found = get_data_kind(detect_kind(path) if kind in ("auto", "memory") else kind)
    found.check(request)
    return found
