"""Atomic file output: nothing is ever left half-written.

Every report, picture and checkpoint goes through :func:`atomic_path`: the caller writes a temporary
file in the destination folder and it is renamed over the destination only when writing succeeded.
An interrupted run (Ctrl-C, crash, full disk) leaves either the old file or none, never a truncated one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import OutputError


def ensure_writable_dir(directory: str | os.PathLike[str]) -> Path:
    """Create ``directory`` (and parents) or raise a one-sentence error saying why it cannot be used."""
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise OutputError(f"Output path {path} exists and is not a directory; choose another output location.")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"Cannot create output directory {path} ({_reason(exc)}); choose another output location.") from None
    if not os.access(path, os.W_OK):
        raise OutputError(f"Output directory {path} is not writable; choose another output location.")
    return path


def _reason(exc: OSError) -> str:
    return (exc.strerror or str(exc) or type(exc).__name__).rstrip(".").lower()


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``destination``; rename it into place on success, delete it on failure.

    Any exception (Ctrl-C included) leaves ``destination`` as it was. An ``OSError`` while creating, writing or
    renaming (a read-only or pseudo file system, a full disk) becomes a one-sentence :class:`OutputError`.
    """
    dest = Path(destination)
    if dest.exists() and dest.is_dir():
        raise OutputError(f"Output path {dest} is a directory, expected a file path.")
    parent = dest.parent if str(dest.parent) else Path(".")
    ensure_writable_dir(parent)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix or dest.suffix or ".tmp", dir=parent)
    except OSError as exc:
        raise OutputError(f"Cannot write {dest} ({_reason(exc)}); choose another output location.") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, dest)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OutputError(f"Cannot write {dest} ({_reason(exc)}); the previous file, if any, is unchanged.") from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_bytes_atomic(destination: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(destination) as tmp:
        tmp.write_bytes(data)
    return Path(destination)


def write_text_atomic(destination: str | os.PathLike[str], text: str) -> Path:
    return write_bytes_atomic(destination, text.encode("utf-8"))


def write_json_atomic(destination: str | os.PathLike[str], obj: Any) -> Path:
    return write_text_atomic(destination, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")
