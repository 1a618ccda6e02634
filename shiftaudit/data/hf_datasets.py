"""Hugging Face ``datasets`` on disk as audit data (the ``hf`` kind): a ``save_to_disk`` folder, or parquet files
(a hub download).

Needs the ``hf`` extra (``pip install 'shiftaudit[hf]'``). Only local files are read -- ``load_from_disk`` for a
saved folder, ``pyarrow`` for parquet -- with the hub switched off, so nothing is downloaded and no cache is written.
The image column is the one with an ``Image`` feature (or ``--image-column``), the label column the ``ClassLabel``
one (or ``--label-column``); ``ClassLabel`` names become the class names, and a class map maps them to the model's
indices as it maps ImageFolder sub-folder names. Images are decoded with PIL one row at a time, in the loader's
workers, through the same preprocessing as image files.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from shiftaudit.data.classes import map_class_names
from shiftaudit.data.dataset import EncodedImageSource
from shiftaudit.data.kinds import DataKind, Loaded, Request, Skipped
from shiftaudit.errors import DataError, UsageError, first_line
from shiftaudit.files import first_repeat
from shiftaudit.limits import MAX_FILE_ROWS, MAX_IMAGE_BYTES, MAX_ROW_GROUP_BYTES, gib

PARQUET_SUFFIX = ".parquet"
LABEL_NAMES = ("label", "labels", "class", "target")  # integer columns taken as labels when no ClassLabel names one
EXTRA = "pip install 'shiftaudit[hf]'"


# ---------------------------------------------------------------------------------------------------------------
# What a folder holds
# ---------------------------------------------------------------------------------------------------------------


def is_saved_dataset(folder: Path) -> bool:
    """A ``Dataset.save_to_disk`` folder (or a ``DatasetDict`` one, whose splits are sub-folders)."""
    return ((folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()) or (
        folder / "dataset_dict.json"
    ).is_file()


def parquet_files(path: Path) -> list[Path]:
    """A ``.parquet`` file, or the parquet files at the top of a folder or in its ``data/`` folder (a hub layout)."""
    if path.is_file():
        return [path] if path.name.lower().endswith(PARQUET_SUFFIX) else []
    for folder in (path, path / "data"):
        try:
            found = sorted(p for p in folder.iterdir() if p.name.lower().endswith(PARQUET_SUFFIX) and p.is_file())
        except OSError:
            continue
        found = [p for p in found if not p.name.startswith(".")]
        if found:
            return found
    return []


def _require_datasets() -> Any:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # local folders only: never ask the hub for anything
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import datasets
    except ImportError:
        raise UsageError(f"Reading Hugging Face datasets needs the datasets package; {EXTRA}.") from None
    return datasets


@contextmanager
def _quiet(datasets: Any) -> Iterator[None]:
    """No progress bars from ``datasets`` on the audit's terminal; the user's own setting is put back."""
    was = datasets.utils.logging.is_progress_bar_enabled()
    datasets.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            datasets.utils.logging.enable_progress_bar()


# ---------------------------------------------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------------------------------------------


class RowSource(EncodedImageSource):
    """The images of one column of a saved dataset or of parquet files, read one row at a time.

    Only paths travel to decoding workers (``__getstate__``); each process opens the files itself: a saved dataset
    memory-mapped by ``load_from_disk``, parquet one row group at a time (the last one kept, as rows come in order).
    """

    def __init__(
        self, paths: list[Path], column: str, *, saved: bool, groups: np.ndarray | None = None, table: Any = None
    ) -> None:
        self.paths = [str(p) for p in paths]
        self.column = column
        self.saved = saved
        self.groups = groups  # parquet: (file, row group, row in group) of every row
        self._open: Any = table  # a saved dataset's table, when the caller has it open already
        self._cached: tuple[tuple[int, int], Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_open": None, "_cached": None}

    def __len__(self) -> int:
        return len(self.groups) if self.groups is not None else len(self._table())

    @property
    def files(self) -> list[str]:
        """The files holding the rows: what a resumed audit checks for change (size and modification time)."""
        if self.saved:
            return sorted(str(p) for p in Path(self.paths[0]).iterdir() if p.is_file())
        return self.paths

    def relative(self, i: int) -> str:
        return f"row {i}"

    def name(self, i: int) -> str:
        return self.relative(i)

    def _table(self) -> Any:
        if self._open is None:
            datasets = _require_datasets()
            with _quiet(datasets):
                self._open = datasets.load_from_disk(self.paths[0]).data
        return self._open

    def cell(self, i: int) -> Any:
        """Row i's image cell as stored: ``{"bytes": ..., "path": ...}`` for an ``Image`` feature, or raw bytes."""
        if self.groups is None:
            return self._table().column(self.column)[i].as_py()
        import pyarrow.parquet as pq

        f, g, r = (int(v) for v in self.groups[i])
        if self._cached is None or self._cached[0] != (f, g):
            self._cached = ((f, g), pq.ParquetFile(self.paths[f]).read_row_group(g, columns=[self.column]).column(0))
        return self._cached[1][r].as_py()

    def encoded(self, i: int) -> io.BytesIO:
        value = self.cell(i)
        if isinstance(value, dict):
            data, path = value.get("bytes"), value.get("path")
            if data is None and path:
                raise ValueError(f"the row refers to the file {path} instead of holding the image")
            value = data
        if not isinstance(value, (bytes, bytearray)) or not value:
            raise ValueError("the row holds no image bytes")
        if len(value) > MAX_IMAGE_BYTES:
            raise ValueError(f"the image is {len(value):,} bytes, more than the {MAX_IMAGE_BYTES:,} allowed")
        return io.BytesIO(bytes(value))


# ---------------------------------------------------------------------------------------------------------------
# Columns
# ---------------------------------------------------------------------------------------------------------------


def _is_image_feature(feature: Any, datasets: Any) -> bool:
    return isinstance(feature, datasets.Image) or (isinstance(feature, dict) and "bytes" in feature)


def pick_columns(features: Any, image_column: str | None, label_column: str | None, where: str) -> tuple[str, str | None]:
    """(image column, label column or None): the ones named, else the ``Image`` and ``ClassLabel`` features."""
    datasets = _require_datasets()
    columns = list(features)
    listed = ", ".join(f"{c} ({type(features[c]).__name__})" for c in columns[:12]) or "none"
    for flag, name in (("--image-column", image_column), ("--label-column", label_column)):
        if name is not None and name not in features:
            raise DataError(f"{where} has no column {name!r} ({flag}); its columns: {listed}.")
    if image_column is None:
        found = [c for c in columns if _is_image_feature(features[c], datasets)]
        if not found:
            raise DataError(f"{where} has no Image column; name the column with --image-column (columns: {listed}).")
        image_column = found[0]
    elif not _is_image_feature(features[image_column], datasets) and getattr(features[image_column], "dtype", "") != "binary":
        raise DataError(f"Column {image_column!r} of {where} holds {type(features[image_column]).__name__}, not images.")
    if label_column is None:
        found = [c for c in columns if isinstance(features[c], datasets.ClassLabel)]
        found = found or [c for c in columns if c.lower() in LABEL_NAMES and "int" in str(getattr(features[c], "dtype", ""))]
        label_column = found[0] if found else None
    elif not isinstance(features[label_column], datasets.ClassLabel) and "int" not in str(
        getattr(features[label_column], "dtype", "")
    ):
        raise DataError(
            f"Column {label_column!r} of {where} holds {type(features[label_column]).__name__}; labels must be a ClassLabel "
            "or integer column."
        )
    return image_column, label_column


# ---------------------------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------------------------


def _open_saved(path: Path, datasets: Any) -> Any:
    if (path / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in path.iterdir() if p.is_dir() and (p / "state.json").is_file())
        raise DataError(
            f"{path} holds the splits {', '.join(splits) or 'none'}; pass one of them, "
            f"e.g. --data {path / (splits or ['test'])[0]}."
        )
    try:
        with _quiet(datasets):
            ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # a damaged folder may raise anything from arrow or json
        raise DataError(f"Cannot read the saved dataset {path}: {type(exc).__name__}: {str(exc)[:200]}.") from None
    return ds


def _parquet_rows(files: list[Path], where: str) -> tuple[Any, list[Any]]:
    """(the features, each file's pyarrow metadata) of parquet files with one schema."""
    import pyarrow.parquet as pq

    datasets = _require_datasets()
    features = None
    metas: list[Any] = []
    for path in files:
        try:
            pf = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow says "Parquet magic bytes not found" and the like
            raise DataError(f"Cannot read {path} as parquet: {str(exc)[:200]}.") from None
        here = datasets.Features.from_arrow_schema(pf.schema_arrow)
        if features is None:
            features = here
        elif here != features:
            raise DataError(f"The parquet files of {where} have different columns: {files[0].name} and {path.name}.")
        metas.append(pf.metadata)
    return features, metas


def check_parquet_sizes(path: Path, meta: Any, columns: list[str]) -> None:
    """The sizes a parquet footer declares, checked against the file before anything is read or allocated.

    Rows are counted from the row groups, each of which says how many it holds; a footer of a few hundred bytes can
    claim billions (every row gets a position in memory), or column chunks of gigabytes that pyarrow would read whole.
    Refused: rows that do not add up to the file's count or exceed :data:`MAX_FILE_ROWS` (as tar shards cap
    samples), a chunk of a column we read that lies past the end of the file, or whose uncompressed size is more
    than :data:`MAX_ROW_GROUP_BYTES`.
    """
    size = os.path.getsize(path)
    rows = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    if any(r < 0 for r in rows) or sum(rows) != meta.num_rows:
        raise DataError(
            f"Parquet file {path} is damaged: its row groups hold {sum(rows):,} rows, its footer says {meta.num_rows:,}."
        )
    if meta.num_rows > MAX_FILE_ROWS:
        raise DataError(
            f"Parquet file {path} is too large: it declares {meta.num_rows:,} rows, more than the {MAX_FILE_ROWS:,} allowed "
            "in one file; split it into several files."
        )
    wanted = [i for i in range(meta.num_columns) if meta.schema.column(i).path.split(".")[0] in columns]
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for i in wanted:
            chunk = group.column(i)
            start = min(o for o in (chunk.dictionary_page_offset, chunk.data_page_offset) if o is not None)
            if start < 0 or chunk.total_compressed_size < 0 or start + chunk.total_compressed_size > size:
                raise DataError(
                    f"Parquet file {path} is damaged: row group {g} declares {chunk.total_compressed_size:,} bytes of column "
                    f"{chunk.path_in_schema!r} at byte {start:,}, past the end of the file ({size:,} bytes)."
                )
            if chunk.total_uncompressed_size > MAX_ROW_GROUP_BYTES:
                raise DataError(
                    f"Parquet file {path} is too large: row group {g} of column {chunk.path_in_schema!r} is "
                    f"{gib(chunk.total_uncompressed_size)} uncompressed, more than the {gib(MAX_ROW_GROUP_BYTES)} read at "
                    "once; write it with smaller row groups."
                )


def _row_positions(metas: list[Any]) -> np.ndarray:
    """The (file, row group, row in group) of every row, built from the checked row counts."""
    parts = []
    for f, meta in enumerate(metas):
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            part = np.empty((n, 3), dtype=np.int64)
            part[:, 0], part[:, 1], part[:, 2] = f, g, np.arange(n)
            parts.append(part)
    return np.concatenate(parts) if parts else np.zeros((0, 3), dtype=np.int64)


def _parquet_labels(files: list[Path], column: str) -> list[Any]:
    import pyarrow.parquet as pq

    out: list[Any] = []
    for path in files:
        out += pq.read_table(path, columns=[column]).column(0).to_pylist()
    return out


def _check_saved(ds: Any, columns: list[str], path: Path) -> None:
    """A saved dataset's arrow files are memory-mapped: a length or offset that points past the data would be read
    from outside the file (a bus error, not an exception). Arrow's full validation checks them without reading the
    images; rows are capped as for parquet."""
    table = ds.data.table
    if table.num_rows > MAX_FILE_ROWS:
        raise DataError(
            f"The saved dataset {path} is too large: it declares {table.num_rows:,} rows, more than the {MAX_FILE_ROWS:,} "
            "allowed."
        )
    try:
        table.select(columns).validate(full=True)
    except Exception as exc:  # pyarrow.ArrowInvalid
        raise DataError(f"The saved dataset {path} is damaged: {first_line(exc)[:200].rstrip('.')}.") from None


def _open_rows(path: Path, request: Request) -> tuple[RowSource, Any, str, str | None, list[Any] | None, str]:
    """(rows, features, image column, label column, the label column's values, what to call the store)."""
    datasets = _require_datasets()
    where = os.fspath(path)
    files = [] if path.is_dir() and is_saved_dataset(path) else parquet_files(path)
    repeat = first_repeat(files)
    if repeat is not None:  # a file and a link to it: every row would be audited twice and narrow the intervals
        raise DataError(
            f"--data {path} holds {repeat[0].name} and {repeat[1].name}, which are one parquet file; each image would be "
            "audited twice and narrow the intervals as if it were a new one: keep one of them."
        )
    if files:
        features, metas = _parquet_rows(files, where)
        image_col, label_col = pick_columns(features, request.image_column, request.label_column, where)
        for file, meta in zip(files, metas):
            check_parquet_sizes(file, meta, [c for c in (image_col, label_col) if c])
        source = RowSource(files, image_col, saved=False, groups=_row_positions(metas))
        raw_labels = _parquet_labels(files, label_col) if label_col else None
        return source, features, image_col, label_col, raw_labels, f"parquet {where}"
    ds = _open_saved(path, datasets)
    features = ds.features
    image_col, label_col = pick_columns(features, request.image_column, request.label_column, where)
    _check_saved(ds, [c for c in (image_col, label_col) if c], path)
    source = RowSource([path], image_col, saved=True, table=ds.data)
    raw_labels = ds.data.column(label_col).to_pylist() if label_col else None
    return source, features, image_col, label_col, raw_labels, f"Hugging Face dataset {where}"


def _labels(
    raw: list[int], feature: Any, label_col: str, request: Request, where: str, notes: list[str]
) -> tuple[list[int], list[str] | None, np.ndarray]:
    """(labels, class names, the rows to audit) of a label column with at least one label.

    Rows without a label are skipped (an error with --strict). ``ClassLabel`` names are the class names, mapped
    through the class map when there is one.
    """
    skipped = Skipped("row")
    skipped += [(f"row {i}", f"no label in column {label_col!r}") for i, v in enumerate(raw) if v < 0]
    skipped.check(request.strict, notes)
    keep = np.flatnonzero(np.asarray(raw) >= 0).astype(np.int64)
    labels = [raw[i] for i in keep]
    if not isinstance(feature, _require_datasets().ClassLabel):
        if request.class_map is not None:
            raise UsageError(f"A class map maps class names, but column {label_col!r} of {where} has none (not a ClassLabel).")
        return labels, None, keep
    names = list(feature.names)
    if max(labels) >= len(names):
        raise DataError(f"Column {label_col!r} of {where} holds {max(labels)}, but its ClassLabel has {len(names)} names.")
    if request.class_map is None:
        return labels, names, keep
    to_model, classes = map_class_names(names, sorted(set(labels)), request.class_map, request.num_classes, where)
    return [to_model[v] for v in labels], classes, keep


class HfDataset(DataKind):
    name = "hf"
    detect_rank = 30
    takes_class_map = True
    takes_columns = True

    def recognises(self, path: Path, skipped: Skipped) -> bool:
        return (path.is_dir() and is_saved_dataset(path)) or bool(parquet_files(path))

    def load(self, path: Path, request: Request) -> Loaded:
        """A saved dataset or parquet files, in row order."""
        source, features, image_col, label_col, raw_labels, what = _open_rows(path, request)
        n = len(source)
        if n == 0:
            raise DataError(f"The {what} holds no rows.")
        notes = [f"images from column {image_col!r}" + (f", labels from {label_col!r}" if label_col else ", no labels")]
        labels: list[int] | None = None
        classes: list[str] | None = None
        keep = np.arange(n, dtype=np.int64)
        raw = None if raw_labels is None else [-1 if v is None else int(v) for v in raw_labels]
        if raw is None or label_col is None:
            if request.class_map is not None:
                raise UsageError(f"A class map maps class names, but {os.fspath(path)} has no label column.")
        elif all(v < 0 for v in raw):  # no row labelled: an unlabelled audit, as for a flat folder
            notes[0] = f"images from column {image_col!r}, no labels (column {label_col!r} is empty)"
        else:
            labels, classes, keep = _labels(raw, features[label_col], label_col, request, os.fspath(path), notes)
        described = f"{len(classes)} classes" if classes else ("labelled" if labels is not None else "unlabelled")
        return Loaded(source, f"{what}: {len(keep)} images, {described}", request.prep, labels, classes, notes, index=keep)
