"""NumPy ``.npy``/``.npz`` files checked before ``np.load`` spends memory on what their headers declare.

``np.load`` allocates the shape an array's header declares before it reads the data, and reads an ``.npz`` with
Python's zipfile. So each array's declared bytes must be exactly the bytes that follow its header (in the file, or in
the zip member whose inflated size :class:`~shiftaudit.ziparchive.ZipArchive` has verified), and an
``.npz`` must be a zip archive that every reader reads alike. The check reads headers only.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from shiftaudit.files import mapped
from shiftaudit.ziparchive import ZipArchive, ZipStructureError

_HEADER_BYTES = 1 << 16  # a .npy header is at most 64 KiB in format 1, and numpy caps later versions' too


def _declared_problem(head: bytes, available: int) -> str | None:
    """Why an array whose file starts with ``head`` cannot be read from ``available`` bytes, or None."""
    stream = io.BytesIO(head)
    try:
        version = npy_format.read_magic(stream)
        reader = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
        shape, _fortran, dtype = reader(stream, max_header_size=_HEADER_BYTES)
    except (ValueError, EOFError, OSError) as exc:
        return f"a damaged array header ({str(exc).splitlines()[0][:120]})"
    if dtype.hasobject:
        return "Python objects (pickled)"
    declared = math.prod(shape) * dtype.itemsize
    if stream.tell() + declared != available:
        return f"an array header declaring {declared:,} bytes of data where {available - stream.tell():,} follow"
    return None


def check_numpy_file(path: Path) -> None:
    """Raise ValueError (a few words) when ``np.load`` would allocate more than the file holds, or read an archive
    other readers read differently."""
    try:
        with mapped(path) as buf:
            if bytes(buf[:6]) == b"\x93NUMPY":
                problem = _declared_problem(bytes(buf[:_HEADER_BYTES]), len(buf))
                if problem is not None:
                    raise ValueError(f"it holds {problem}")
                return
            with ZipArchive(buf) as archive:
                for name, member in archive.members.items():
                    if not name.endswith(".npy"):
                        continue
                    problem = _declared_problem(archive.head(name, _HEADER_BYTES), member.size)
                    if problem is not None:
                        raise ValueError(f"its array {name} holds {problem}")
    except ZipStructureError as exc:
        raise ValueError(f"it is a damaged or ambiguous zip archive ({exc})") from None


def load_numpy(path: Path) -> Any:
    """``np.load`` (no pickles) after :func:`check_numpy_file`: an array, or a dict of the archive's arrays."""
    check_numpy_file(path)
    loaded = np.load(path, allow_pickle=False)
    if isinstance(loaded, np.ndarray):
        return loaded
    with loaded:
        return {k: loaded[k] for k in loaded.files}
