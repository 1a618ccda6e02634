"""WebDataset tar shards (``train-{000..099}.tar``) as audit data (the ``webdataset`` kind), read in place: never
unpacked to disk.

A shard is a plain tar file whose members are grouped into samples by key (the member path up to the first dot of
its file name): ``cat/0001.jpg`` and ``cat/0001.cls`` are one sample with an image and a label. Loading reads each
shard's member headers once with the standard library's ``tarfile`` (seeking over image data, reading only the small
``.cls`` labels), and keeps where each image's bytes lie; the loader then reads and decodes one image at a time from
its offset, so decoding workers, the seeded ``--limit``, resume and the torchrun split work as they do for folders.
Why not the ``webdataset`` package: it streams samples through worker processes in an order of its own, which gives
no stable sample positions to draw a seeded subset from, resume, or report per image (docs/data.md).
"""

from __future__ import annotations

import io
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from shiftaudit.data.classes import ClassMap, map_class_names
from shiftaudit.data.dataset import EncodedImageSource
from shiftaudit.data.kinds import DataKind, Loaded, Request, Skipped
from shiftaudit.errors import DataError, UsageError
from shiftaudit.files import first_repeat, node_kind, reason
from shiftaudit.limits import MAX_IMAGE_BYTES, MAX_SHARD_SAMPLES, MAX_SHARDS, MAX_TAR_HEADER_BYTES, MAX_TAR_HEADER_CHAIN

SHARD_SUFFIX = ".tar"
IMAGE_EXTS = frozenset({"jpg", "jpeg", "png", "ppm", "pgm", "pbm", "bmp", "webp", "tif", "tiff", "gif"})
LABEL_EXT = "cls"  # WebDataset's convention: the class index (or, here, a class name) as text
MAX_LABEL_BYTES = 4096
_COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(\d+)\.\.(\d+)$")


# ---------------------------------------------------------------------------------------------------------------
# Naming the shards
# ---------------------------------------------------------------------------------------------------------------


def expand_braces(pattern: str) -> list[str]:
    """``train-{000..002}.tar`` -> the three names, zero padding kept; ``{a,b}`` lists alternatives; groups multiply.

    The same notation as WebDataset and the shell (without nesting); more than :data:`MAX_SHARDS` names is refused
    before any is made.
    """
    m = _BRACE.search(pattern)
    if m is None:
        if "{" in pattern or "}" in pattern:
            raise DataError(f"Unbalanced braces in the shard pattern {pattern!r}; write e.g. train-{{000..099}}.tar.")
        return [pattern]
    body = m.group(1)
    rng = _RANGE.match(body)
    if rng:
        lo, hi = int(rng.group(1)), int(rng.group(2))
        if hi < lo:
            raise DataError(f"The shard range {{{body}}} runs backwards; write {{{rng.group(2)}..{rng.group(1)}}}.")
        if hi - lo + 1 > MAX_SHARDS:
            raise DataError(f"The shard range {{{body}}} names {hi - lo + 1:,} shards, more than the {MAX_SHARDS:,} allowed.")
        width = len(rng.group(1)) if rng.group(1).startswith("0") else 0
        choices = [str(v).zfill(width) for v in range(lo, hi + 1)]
    elif "," in body:
        choices = body.split(",")
    else:
        raise DataError(f"Cannot read {{{body}}} in the shard pattern {pattern!r}; use {{000..099}} or {{a,b}}.")
    rest = expand_braces(pattern[m.end() :])
    if len(choices) * len(rest) > MAX_SHARDS:
        raise DataError(f"The shard pattern {pattern!r} names more than the {MAX_SHARDS:,} shards allowed.")
    return [pattern[: m.start()] + c + r for c in choices for r in rest]


def is_shard_pattern(text: str) -> bool:
    """A data path that names tar shards: ``x.tar`` or a brace pattern such as ``train-{000..099}.tar``."""
    return text.lower().endswith(SHARD_SUFFIX) or (_BRACE.search(text) is not None and SHARD_SUFFIX in text.lower())


def shard_files(path: Path) -> list[Path]:
    """The shards a data path names: a brace pattern, one ``.tar`` file, or every ``.tar`` file in a folder (sorted)."""
    text = os.fspath(path)
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.name.lower().endswith(SHARD_SUFFIX) and not p.name.startswith("."))
        if not found:
            raise DataError(f"No {SHARD_SUFFIX} shards found in {path}.")
        if len(found) > MAX_SHARDS:
            raise DataError(f"{path} holds {len(found):,} shards, more than the {MAX_SHARDS:,} allowed.")
        refuse_repeated_shards(found, text)
        return found
    names = [Path(n) for n in expand_braces(text)]
    missing = [n for n in names if not n.exists()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"Shard {missing[0]} does not exist{more}.")
    refuse_repeated_shards(names, text)
    return names


def refuse_repeated_shards(names: list[Path], pattern: str) -> None:
    """Refuse a pattern that names one file twice (``{a,a}.tar``, or a name and a link to it): its images would be
    audited twice, and the twice-counted images would narrow every interval as if they were new ones."""
    repeat = first_repeat(names)
    if repeat is not None:
        first, name = repeat
        same = f"{name} twice" if os.fspath(first) == os.fspath(name) else f"{first} and {name}, which are one file"
        raise DataError(
            f"--data {pattern} names {same}; each image would be audited twice and narrow the intervals as if it "
            "were a new one: name each shard once."
        )


def has_shards(folder: Path) -> bool:
    """A folder holding ``.tar`` shards at its top level."""
    try:
        return any(p.name.lower().endswith(SHARD_SUFFIX) and not p.name.startswith(".") for p in folder.iterdir())
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------------------------
# Indexing the shards
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class _Sample:
    key: str
    image: tuple[int, int] | None = None  # (offset of the data in the shard, size)
    label: str | None = None
    problem: str | None = None
    exts: list[str] = field(default_factory=list)


@dataclass
class ShardIndex:
    """Where every usable sample's image lies: shard number, data offset and size, key, and its label text."""

    shards: list[Path]
    shard: list[int] = field(default_factory=list)
    offset: list[int] = field(default_factory=list)
    size: list[int] = field(default_factory=list)
    key: list[str] = field(default_factory=list)
    label: list[str | None] = field(default_factory=list)
    skipped: Skipped = field(default_factory=lambda: Skipped("sample"))  # (shard:key or shard, why)


def _member_problem(member: tarfile.TarInfo) -> str | None:
    """Why a member cannot be part of a sample: a path that would leave the archive, or not plain file data."""
    parts = PurePosixPath(member.name).parts
    if member.name.startswith("/") or ".." in parts:
        return "an absolute or '..' member path (a crafted archive?)"
    if not member.isfile():
        return "a link or special member, not file data"
    if member.size > MAX_IMAGE_BYTES:
        return f"{member.size:,} bytes, more than the {MAX_IMAGE_BYTES:,} allowed for one image"
    return None


def _split_key(name: str) -> tuple[str, str]:
    """``a/b/0001.seg.png`` -> (``a/b/0001``, ``seg.png``): WebDataset splits at the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


BLOCK = tarfile.BLOCKSIZE
_EXTENSION_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)


class _HeaderLie(Exception):
    """An extension header declares more than the shard holds or than any real header needs."""


class _CheckedTarInfo(tarfile.TarInfo):
    """tarfile's member header, checking an extension header before tarfile reads it.

    A pax header or a GNU long name is read whole into memory (``fileobj.read(size)``, which allocates ``size`` bytes
    before reading), and each one reads the next header recursively: a 2 KB shard can declare 8 GiB, or chain
    thousands of headers into a RecursionError. Each is refused when its declared size is more than the bytes left in
    the shard or than :data:`MAX_TAR_HEADER_BYTES`, and when more than :data:`MAX_TAR_HEADER_CHAIN` precede a member.
    """

    def _proc_member(self, tar: Any) -> Any:
        if self.type not in _EXTENSION_TYPES:
            return super()._proc_member(tar)  # type: ignore[misc]
        left = os.fstat(tar.fileobj.fileno()).st_size - (self.offset + BLOCK)
        what = f"a {'pax' if self.type in (b'x', b'g', b'X') else 'GNU long-name'} header at byte {self.offset:,}"
        if self.size > left:
            raise _HeaderLie(f"is damaged: {what} declares {self.size:,} bytes, but only {max(left, 0):,} follow it")
        if self.size > MAX_TAR_HEADER_BYTES:
            raise _HeaderLie(f"is too large: {what} declares {self.size:,} bytes, more than the {MAX_TAR_HEADER_BYTES:,} allowed")
        depth = getattr(tar, "header_depth", 0) + 1
        if depth > MAX_TAR_HEADER_CHAIN:
            raise _HeaderLie(f"is damaged: more than {MAX_TAR_HEADER_CHAIN} extension headers in a row at byte {self.offset:,}")
        tar.header_depth = depth
        try:
            return super()._proc_member(tar)  # type: ignore[misc]
        finally:
            tar.header_depth = depth - 1


def _open_shard(path: Path) -> tuple[io.BufferedReader, tarfile.TarFile]:
    """A shard opened for reading headers; a compressed or non-tar file is one sentence."""
    try:
        kind = node_kind(path, follow=True)
        if kind is not None:
            raise DataError(f"Shard {path} is {kind}, not a regular file.")
        fh = open(path, "rb")  # noqa: SIM115 - closed by the caller with the tar
    except OSError as exc:
        raise DataError(f"Cannot read shard {path}: {reason(exc)}.") from None
    head = fh.read(6)
    for magic, name in _COMPRESSED.items():
        if head.startswith(magic):
            fh.close()
            raise DataError(
                f"Shard {path} is {name}-compressed; images are read in place by offset, which needs plain tar shards "
                "(decompress them first)."
            )
    fh.seek(0)
    try:
        tar = tarfile.open(fileobj=fh, mode="r:", tarinfo=_CheckedTarInfo)  # noqa: SIM115 - closed by the caller
    except tarfile.TarError:
        fh.close()
        raise DataError(f"Shard {path} is not a tar file.") from None
    except _HeaderLie as exc:
        fh.close()
        raise DataError(f"Shard {path} {exc}.") from None
    return fh, tar


def _index_one(path: Path, number: int, index: ShardIndex) -> None:
    fh, tar = _open_shard(path)
    samples: dict[str, _Sample] = {}
    with fh, tar:
        try:
            while (member := tar.next()) is not None:
                tar.members = []  # type: ignore[attr-defined]  # headers are not kept: a large shard costs no memory
                if member.isdir():
                    continue
                key, ext = _split_key(member.name)
                if not ext or PurePosixPath(member.name).name.startswith("."):
                    continue
                sample = samples.setdefault(key, _Sample(key))
                sample.exts.append(ext)
                if ext not in IMAGE_EXTS and ext != LABEL_EXT:
                    continue  # captions, json, masks: not what an audit needs
                problem = _member_problem(member)
                if problem:
                    sample.problem = sample.problem or f"{member.name}: {problem}"
                elif ext == LABEL_EXT:
                    sample.label = _read_label(tar, member, path)
                elif sample.image is not None:
                    sample.problem = sample.problem or "two images in one sample"
                else:
                    sample.image = (member.offset_data, member.size)
                if len(samples) > MAX_SHARD_SAMPLES:
                    raise DataError(f"Shard {path} holds more than the {MAX_SHARD_SAMPLES:,} samples allowed in one shard.")
        except tarfile.TarError as exc:
            index.skipped.append((path.name, f"the tar is damaged after {len(samples)} samples ({exc})"))
        except _HeaderLie as exc:  # a crafted size, not a cut file: the whole shard is suspect
            raise DataError(f"Shard {path} {exc}.") from None
    for s in samples.values():
        where = f"{path.name}:{s.key}"
        if s.problem:
            index.skipped.append((where, s.problem))
        elif s.image is None:
            index.skipped.append((where, f"no image member (found {', '.join(s.exts)})"))
        else:
            index.shard.append(number)
            index.offset.append(s.image[0])
            index.size.append(s.image[1])
            index.key.append(s.key)
            index.label.append(s.label)


def _read_label(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> str | None:
    if member.size > MAX_LABEL_BYTES:
        return None
    f = tar.extractfile(member)  # read into memory, never written anywhere
    if f is None:
        return None
    try:
        return f.read().decode("utf-8").strip() or None
    except UnicodeDecodeError:
        return None


def index_shards(shards: list[Path]) -> ShardIndex:
    """Read every shard's headers (and labels) in order; what cannot be a sample is listed in ``skipped``."""
    index = ShardIndex(shards=list(shards))
    for number, path in enumerate(shards):
        _index_one(path, number, index)
    return index


# ---------------------------------------------------------------------------------------------------------------
# Reading one image
# ---------------------------------------------------------------------------------------------------------------


class ShardSource(EncodedImageSource):
    """Images inside tar shards, each read from its offset and decoded with PIL on demand (in the loader's workers)."""

    def __init__(self, index: ShardIndex, root: Path) -> None:
        self.shards = [str(p) for p in index.shards]
        self.shard = np.asarray(index.shard, dtype=np.int64)
        self.offset = np.asarray(index.offset, dtype=np.int64)
        self.size = np.asarray(index.size, dtype=np.int64)
        self.keys = list(index.key)
        self.root = str(root)

    @property
    def files(self) -> list[str]:
        """The shard files: what a resumed audit checks for change (size and modification time)."""
        return self.shards

    def __len__(self) -> int:
        return len(self.keys)

    def relative(self, i: int) -> str:
        """``shard.tar:key``: where the image is, as the report names it."""
        return f"{os.path.basename(self.shards[int(self.shard[i])])}:{self.keys[i]}"

    def name(self, i: int) -> str:
        return self.relative(i)

    def read(self, i: int) -> bytes:
        with open(self.shards[int(self.shard[i])], "rb") as fh:
            fh.seek(int(self.offset[i]))
            data = fh.read(int(self.size[i]))
        if len(data) != int(self.size[i]):
            raise OSError(0, "the shard is shorter than its tar header says (truncated)")
        return data

    def encoded(self, i: int) -> io.BytesIO:
        return io.BytesIO(self.read(i))


# ---------------------------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------------------------


def shard_labels(
    texts: list[str | None], class_map: ClassMap | None, num_classes: int | None, where: str
) -> tuple[list[int] | None, list[str] | None, list[int]]:
    """(labels, class names, positions without a label) from the ``.cls`` texts.

    Whole numbers are class indices; anything else is a class name, numbered like ImageFolder sub-folders (sorted)
    or through the class map. No label anywhere: unlabelled (None).
    """
    missing = [i for i, t in enumerate(texts) if t is None]
    given = [t for t in texts if t is not None]
    if not given:
        if class_map is not None:
            raise UsageError(f"A class map names classes, but no sample of {where} has a .{LABEL_EXT} label.")
        return None, None, missing
    if all(t.isascii() and t.isdigit() and len(t) <= 18 for t in given):
        if class_map is not None:
            raise UsageError(f"The .{LABEL_EXT} labels of {where} are class indices already; a class map applies to class names.")
        return [int(t) if t is not None else -1 for t in texts], None, missing
    names = sorted(set(given))
    position = {name: i for i, name in enumerate(names)}
    used = [position[t] for t in given]
    if class_map is None:
        to_model, classes = list(range(len(names))), names
    else:
        to_model, classes = map_class_names(names, used, class_map, num_classes, where)
    return [to_model[position[t]] if t is not None else -1 for t in texts], classes, missing


class WebDataset(DataKind):
    name = "webdataset"
    detect_rank = 60
    takes_class_map = True

    def names_files(self, text: str) -> bool:
        return is_shard_pattern(text)  # which of the files exist is checked when they are read

    def recognises(self, path: Path, skipped: Skipped) -> bool:
        if path.is_file():
            return is_shard_pattern(path.name)
        return has_shards(path) if path.is_dir() else not path.exists() and is_shard_pattern(os.fspath(path))

    def load(self, path: Path, request: Request) -> Loaded:
        """The samples of the shards ``path`` names."""
        shards = shard_files(path)
        index = index_shards(shards)
        where = os.fspath(path)
        labels, classes, missing = shard_labels(index.label, request.class_map, request.num_classes, where)
        notes: list[str] = []
        skipped = index.skipped
        if labels is not None and missing:
            skipped += [(f"{shards[index.shard[i]].name}:{index.key[i]}", f"no .{LABEL_EXT} label") for i in missing]
            keep = [i for i in range(len(labels)) if labels[i] >= 0]
            for name in ("shard", "offset", "size", "key"):
                setattr(index, name, [getattr(index, name)[i] for i in keep])
            labels = [labels[i] for i in keep]
        if not index.key:
            if skipped:
                raise DataError(f"No sample of {where} can be audited; {skipped.note()}.")
            raise DataError(f"The shards {where} hold no samples with an image ({', '.join(sorted(IMAGE_EXTS))}).")
        skipped.check(request.strict, notes)
        n = len(index.key)
        described = f"{len(classes)} classes" if classes else ("labelled" if labels is not None else "unlabelled")
        return Loaded(
            ShardSource(index, path if path.is_dir() else path.parent),
            f"WebDataset {where}: {n} images in {len(shards)} shard{'s' if len(shards) != 1 else ''}, {described}",
            request.prep,
            labels,
            classes,
            notes,
        )
