"""Atomic file output: nothing is ever left half-written, and nothing but a regular file is ever replaced.

Every report, picture, checkpoint and state file goes through :func:`atomic_path`: the caller writes a temporary
file in the destination folder; it gets the mode the umask asks for, is flushed to disk and only then renamed over
the destination. An interrupted run (Ctrl-C, crash, full disk) leaves either the old file or none, never a truncated
one. :func:`check_destination` is the one place that decides whether a path may be replaced. Inside
:func:`all_or_nothing` the renames wait until every output of the run is complete, so a run writes all or none.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import secrets
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shiftaudit.errors import OutputError

_KINDS = (
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def node_kind(path: str | os.PathLike[str]) -> str | None:
    """What stands at ``path`` when it is not a regular file ("a FIFO (named pipe)", "a symbolic link", ...); None for
    a regular file or nothing. ``lstat``: a symlink is reported as one, never followed."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise OutputError(f"Cannot use output path {path} ({_reason(exc)}); choose another output location.") from None
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")


def check_destination(path: str | os.PathLike[str], label: str = "Output path") -> None:
    """Refuse, in one sentence, to replace anything but a regular file.

    A rename replaces whatever it lands on: over a FIFO, device node or socket it would swap it for a regular file
    (as root, ``--json /dev/null`` would delete /dev/null for the whole machine). A symlink is refused even when it
    points to a regular file, so an output never lands anywhere but the path given. ``-`` is refused too: it means
    standard output, and a file of that name would only confuse.
    """
    if str(path) == "-":
        raise OutputError(f"{label} - would create a file named '-'; only --json takes '-' (standard output), give a file path.")
    kind = node_kind(path)
    if kind == "a folder":
        raise OutputError(f"{label} {path} is a folder; pass a file path, not a folder.")
    if kind is not None:
        raise OutputError(
            f"{label} {path} is {kind}, not a regular file; "
            "shiftaudit only replaces regular files, so choose another output path."
        )


def ensure_writable_dir(directory: str | os.PathLike[str]) -> Path:
    """Create ``directory`` (and parents) or raise a one-sentence error saying why it cannot be used."""
    path = Path(directory)
    if os.path.lexists(path) and not path.is_dir():  # a symlink to a folder is a folder; to anything else it is not
        raise OutputError(f"Output path {path} is {node_kind(path) or 'a file'}, not a folder; choose another output location.")
    missing = []
    p = path
    while not os.path.lexists(p) and p != p.parent:
        missing.append(p)
        p = p.parent
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"Cannot create output directory {path} ({_reason(exc)}); choose another output location.") from None
    stage = _STAGE.get()
    if stage is not None:
        stage.folders.extend(reversed(missing))
    if not os.access(path, os.W_OK):
        raise OutputError(f"Output directory {path} is not writable; choose another output location.")
    return path


def _reason(exc: OSError) -> str:
    return (exc.strerror or str(exc) or type(exc).__name__).rstrip(".").lower()


def umask() -> int:
    """The process umask, read without changing it where /proc allows (``os.umask`` can only read it by setting it)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable; some systems cannot open or sync a folder, which only costs durability."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _seal(tmp: Path) -> None:
    """Give a finished temporary file the mode any tool would create it with (mkstemp makes it 0600), and flush it to
    disk, so that a crash right after "wrote report.json" cannot leave an empty file behind the new name."""
    os.chmod(tmp, 0o666 & ~umask())
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace(tmp: Path, dest: Path) -> None:
    check_destination(dest)  # again just before the rename: something may have appeared there during the run
    os.replace(tmp, dest)


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``destination``; rename it into place on success, delete it on failure.

    Any exception (Ctrl-C included) leaves ``destination`` as it was. An ``OSError`` while creating, writing or
    renaming (a read-only or pseudo file system, a full disk) becomes a one-sentence :class:`OutputError`. Inside
    :func:`all_or_nothing` the finished file waits for the end of the block instead of being renamed now.
    """
    dest = Path(destination)
    check_destination(dest)
    parent = dest.parent
    ensure_writable_dir(parent)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix or dest.suffix or ".tmp", dir=parent)
    except OSError as exc:
        raise OutputError(f"Cannot write {dest} ({_reason(exc)}); choose another output location.") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _seal(tmp)
        stage = _STAGE.get()
        if stage is not None:
            stage.add(dest, tmp)
            return
        _replace(tmp, dest)
        _fsync_dir(parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OutputError(f"Cannot write {dest} ({_reason(exc)}); the previous file, if any, is unchanged.") from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


class _Stage:
    """The outputs of one run, each complete in its temporary file, waiting to be renamed together."""

    def __init__(self) -> None:
        self.files: dict[Path, Path] = {}  # destination -> finished temporary file
        self.folders: list[Path] = []  # folders this run created, outermost first
        self.stdout: list[str] = []

    def add(self, dest: Path, tmp: Path) -> None:
        old = self.files.pop(dest, None)
        if old is not None:  # written twice in one run: the last version wins
            old.unlink(missing_ok=True)
        self.files[dest] = tmp

    def discard(self) -> None:
        for tmp in self.files.values():
            with contextlib.suppress(OSError):
                tmp.unlink()
        self.files.clear()
        for folder in reversed(self.folders):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if still empty: never a folder something else wrote into

    def commit(self) -> None:
        """Rename every file into place, or, if one rename fails, put back what the others replaced."""
        for dest in self.files:
            check_destination(dest)
        done: list[tuple[Path, bool, Path | None]] = []  # (destination, existed before, hard-link backup of it)
        try:
            for dest, tmp in self.files.items():
                existed = os.path.lexists(dest)
                backup = _hard_link_backup(dest) if existed else None
                try:
                    os.replace(tmp, dest)
                except OSError:
                    if backup is not None:
                        backup.unlink(missing_ok=True)
                    raise
                done.append((dest, existed, backup))
        except OSError as exc:
            failed = dest
            for renamed, existed, backup in reversed(done):
                with contextlib.suppress(OSError):
                    if backup is not None:
                        os.replace(backup, renamed)
                    elif not existed:
                        renamed.unlink()
            self.discard()
            raise OutputError(
                f"Cannot write {failed} ({_reason(exc)}); no output of this run was written, previous files are unchanged."
            ) from None
        for _, _, backup in done:
            if backup is not None:
                backup.unlink(missing_ok=True)
        for folder in {dest.parent for dest in self.files}:
            _fsync_dir(folder)
        for text in self.stdout:
            sys.stdout.write(text)
            sys.stdout.flush()


def _hard_link_backup(dest: Path) -> Path | None:
    """A second name for the file about to be replaced, to restore it if a later rename of the run fails (None where
    the file system has no hard links: that file then cannot be put back)."""
    backup = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.bak")
    try:
        os.link(dest, backup, follow_symlinks=False)
    except OSError:
        return None
    return backup


_STAGE: contextvars.ContextVar[_Stage | None] = contextvars.ContextVar("shiftaudit_output_stage", default=None)


@contextlib.contextmanager
def all_or_nothing() -> Iterator[None]:
    """Write every output of the block, or none: files are renamed into place at its end, after all were written.

    On any failure (a full disk, a picture that cannot be drawn, Ctrl-C) the temporary files and the folders the
    block created are removed and previous files stay as they were. Nested blocks join the outer one.
    """
    if _STAGE.get() is not None:
        yield
        return
    stage = _Stage()
    token = _STAGE.set(stage)
    try:
        yield
    except BaseException:
        _STAGE.reset(token)
        stage.discard()
        raise
    _STAGE.reset(token)
    try:
        stage.commit()
    except BaseException:
        stage.discard()
        raise


def pending(path: str | os.PathLike[str]) -> Path:
    """Where the content of ``path`` is now: its finished temporary file inside :func:`all_or_nothing`, else the path
    itself. A later output of a run may read an earlier one (the HTML page embeds the pictures)."""
    stage = _STAGE.get()
    return stage.files.get(Path(path), Path(path)) if stage is not None else Path(path)


def write_stdout(text: str) -> None:
    """Standard output as an output (``--json -``): inside :func:`all_or_nothing` it is written after the files."""
    stage = _STAGE.get()
    if stage is not None:
        stage.stdout.append(text)
        return
    sys.stdout.write(text)
    sys.stdout.flush()


def write_bytes_atomic(destination: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(destination) as tmp:
        tmp.write_bytes(data)
    return Path(destination)


def write_text_atomic(destination: str | os.PathLike[str], text: str) -> Path:
    return write_bytes_atomic(destination, text.encode("utf-8"))


def write_json_atomic(destination: str | os.PathLike[str], obj: Any) -> Path:
    """The JSON file, or standard output when ``destination`` is ``-``."""
    text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n"
    if str(destination) == "-":
        write_stdout(text)
        return Path("-")
    return write_text_atomic(destination, text)
