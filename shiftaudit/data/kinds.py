"""What a kind of data source is, and the registry of kinds by name (``--data-kind``, ``load_data(kind=...)``).

A kind says how it recognises a path (:meth:`DataKind.recognises`, asked in ``detect_rank`` order when the kind is
``auto``), how it loads one (:meth:`DataKind.load` -> :class:`Loaded`, the parts of the one
:class:`~shiftaudit.data.dataset.AuditDataset` that :func:`~shiftaudit.data.sources.load_data` builds), and what
it takes: a class map for its class names, a preprocessing, raw tensors, column names. Adding a kind is one
:class:`DataKind` subclass and a :func:`register_data_kind` call. What a kind could not use goes in one
:class:`Skipped` list: counted in the notes, fatal with ``--strict``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from shiftaudit.data.classes import ClassMap
from shiftaudit.data.dataset import AuditDataset, ImageSource
from shiftaudit.data.imagenet import missing_class_map
from shiftaudit.data.presets import Preprocessing
from shiftaudit.errors import DataError, UsageError


@dataclass(frozen=True)
class Request:
    """What ``load_data`` was asked for, as every kind reads it."""

    preprocessing: Preprocessing | None
    class_map: ClassMap | None = None
    strict: bool = False
    raw: bool = False
    num_classes: int | None = None
    image_column: str | None = None
    label_column: str | None = None

    @property
    def prep(self) -> Preprocessing:
        """The preprocessing of a kind that decodes images (``load_data`` refuses such a kind without one)."""
        assert self.preprocessing is not None, "load_data checks that a kind which decodes images has a preprocessing"
        return self.preprocessing


@dataclass
class Loaded:
    """What a kind read: the parts of an :class:`~shiftaudit.data.dataset.AuditDataset`."""

    source: ImageSource
    description: str
    preprocessing: Preprocessing | None
    labels: list[int] | None = None
    classes: list[str] | None = None
    notes: list[str] = field(default_factory=list)
    index: np.ndarray | None = None  # the items of the source to audit (default: all)
    has_labels: bool | None = None  # default: whether there are labels
    image_size: tuple[int, int] | None = None  # default: the preprocessing's
    channels: int | None = None  # default: the preprocessing's

    def geometry(self) -> tuple[tuple[int, int], int]:
        """(image size, channels) of every item: as given, or the preprocessing's."""
        if self.image_size is not None and self.channels is not None:
            return self.image_size, self.channels
        assert self.preprocessing is not None, "a kind gives image_size and channels, or a preprocessing"
        return self.preprocessing.size, self.preprocessing.channels


class Skipped(list[tuple[str, str]]):
    """``(where, why)`` of entries that could not be used: counted in a note, and an error with ``--strict``.

    ``what`` names them ("sample", "row"); None: files and folders (unreadable entries, named relative to ``root``).
    """

    def __init__(self, what: str | None = None, root: Path | None = None) -> None:
        super().__init__()
        self.what = what
        self.root = root

    def _name(self, where: str) -> str:
        try:
            return where if self.root is None else os.path.relpath(where, self.root)
        except ValueError:
            return where

    def note(self) -> str:
        n = len(self)
        shown = ", ".join(f"{self._name(p)} ({why})" for p, why in self[:5]) + (", ..." if n > 5 else "")
        noun = f"unreadable entr{'ies' if n != 1 else 'y'}" if self.what is None else f"{self.what}{'s' if n != 1 else ''}"
        return f"{n} {noun} skipped: {shown}"

    def check(self, strict: bool, notes: list[str]) -> None:
        """Count what cannot be audited in the notes; with --strict it is an error, like an unreadable image."""
        if not self:
            return
        if strict:
            where, why = self[0]
            if self.what is None:
                raise DataError(f"Cannot read {where}: {why}.", hint="leave out --strict to skip unreadable images and folders")
            raise DataError(f"Cannot use {self.what} {where}: {why}.", hint=f"leave out --strict to skip such {self.what}s")
        notes.append(self.note())


class DataKind:
    """A kind of data source on disk. Subclasses set the name and what differs, and implement ``load``."""

    name: ClassVar[str]
    detect_rank: ClassVar[int] = 1000  # auto-detection asks kinds in this order (ties: registration order)
    takes_class_map: ClassVar[bool] = False  # its class names can be mapped to the model's indices (--class-map)
    class_names: ClassVar[str] = "the class names"  # what a class map maps, in the hint for labels out of range
    needs_preprocessing: ClassVar[bool] = True  # encoded images: decoded and preprocessed
    takes_raw: ClassVar[bool] = False  # raw=True: tensors that already are the network input
    takes_columns: ClassVar[bool] = False  # takes image_column / label_column

    def recognises(self, path: Path, skipped: Skipped) -> bool:
        """Whether ``path`` holds this kind (unreadable entries seen on the way go in ``skipped``)."""
        return False

    def names_files(self, text: str) -> bool:
        """Whether ``text`` is a pattern naming files of this kind, which need not exist as one path."""
        return False

    def load(self, path: Path, request: Request) -> Loaded:
        raise NotImplementedError

    def check(self, request: Request) -> None:
        """Refuse, before anything is read, what this kind does not take."""
        if request.class_map is not None and not self.takes_class_map:
            raise UsageError(
                f"A class map applies to ImageFolder trees (one sub-folder per class), Hugging Face datasets and shards, "
                f"not to {self.name} data."
            )
        if (request.image_column is not None or request.label_column is not None) and not self.takes_columns:
            flag = "--image-column" if request.image_column is not None else "--label-column"
            raise UsageError(f"{flag} names a column of a Hugging Face dataset, not of {self.name} data.")
        if request.raw and not self.takes_raw:
            raise UsageError("--raw applies to tensor files (.npz/.pt); image files are always decoded and preprocessed.")
        if self.needs_preprocessing and request.preprocessing is None:
            raise UsageError("Image files need a preprocessing (crop size, mean, std), e.g. presets.get_preset('imagenet').")


_KINDS: dict[str, DataKind] = {}


def register_data_kind(kind: DataKind) -> DataKind:
    """Make ``kind`` known by its name (``--data-kind NAME``) and to auto-detection."""
    if kind.name in _KINDS and type(_KINDS[kind.name]) is not type(kind):
        raise ValueError(f"a data kind named {kind.name!r} is already registered")
    _KINDS[kind.name] = kind
    return kind


def unregister_data_kind(name: str) -> None:
    _KINDS.pop(name, None)


def data_kind_names() -> tuple[str, ...]:
    return tuple(_KINDS)


def data_kinds() -> list[DataKind]:
    """The registered kinds in the order auto-detection asks them."""
    return sorted(_KINDS.values(), key=lambda kind: kind.detect_rank)


def get_data_kind(name: str) -> DataKind:
    try:
        return _KINDS[name]
    except (KeyError, TypeError):
        raise DataError(f"Unknown data kind {name!r}; use auto, {', '.join(_KINDS)}.") from None


def make_dataset(
    loaded: Loaded, kind: DataKind | None, request: Request, canvas: int | None, limit: int | None, seed: int
) -> AuditDataset:
    """The one place an :class:`AuditDataset` is made: what a kind loaded, checked against the model's classes,
    with the crop-mode canvas and a seeded random subset (kept in the original order, so reports stay comparable)."""
    named = kind is not None and kind.takes_class_map and bool(loaded.classes)
    if request.class_map is None and named:
        problem = missing_class_map(loaded.classes or [], request.num_classes)
        if problem:
            raise DataError(problem)
    if request.num_classes is not None and loaded.labels:
        top = max(loaded.labels)
        if top >= request.num_classes:
            fix = (
                f"pass --class-map to map {kind.class_names} to the model's class indices"
                if kind is not None and named
                else "the labels must be the model's class indices"
            )
            raise DataError(f"Labels go up to {top} but the model has {request.num_classes} classes; {fix}.")
    size, channels = loaded.geometry()
    notes, description, labels = list(loaded.notes), loaded.description, loaded.labels
    if canvas is not None and loaded.preprocessing is not None:
        notes.append(
            f"crop mode: images preprocessed to {size[0]}x{size[1]} canvases, the model sees "
            f"{size[0] - 2 * canvas}x{size[1] - 2 * canvas} crops of them (margin {canvas} px)"
        )
    index = np.arange(len(loaded.source), dtype=np.int64) if loaded.index is None else loaded.index
    if limit is not None and limit < len(index):
        n = len(index)
        pick = np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))
        index, labels = index[pick], None if labels is None else [labels[i] for i in pick]
        description += f" (random subset of {limit} of {n}, seed {seed})"
    return AuditDataset(
        loaded.source,
        index=index,
        labels=labels,
        has_labels=loaded.has_labels,
        classes=loaded.classes,
        kind="memory" if kind is None else kind.name,
        description=description,
        image_size=size,
        channels=channels,
        preprocessing=loaded.preprocessing,
        notes=notes,
        strict=request.strict,
        canvas_margin=canvas if loaded.preprocessing is not None else None,
    )
