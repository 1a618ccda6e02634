"""Atomic file output: nothing is ever left half-written, and nothing but a regular file is ever replaced.

Every report, picture, checkpoint and state file goes through :func:`atomic_path`: the caller writes a temporary
file in the destination folder; it gets the mode the umask asks for, is flushed to disk and only then renamed over
the destination. An interrupted run (Ctrl-C, crash, full disk) leaves either the old file or none, never a truncated
one. :func:`check_destination` is the one place that decides whether a path may be replaced, and
:func:`check_name_length` whether its name (and the temporary names beside it) fit the file system. Inside
:func:`all_or_nothing` the renames wait until every output of the run is complete, so a run writes all or none.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import json
import os
import secrets
import stat
import sys
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


NAME_MAX = 255  # when the file system cannot say (os.pathconf): Linux, macOS and Windows file systems
PATH_MAX = 4096  # bytes, with the terminating NUL
_RANDOM = 8  # random characters in a temporary (or backup) name
_TAIL = 32  # the longest suffix a temporary name keeps (a longer one becomes .tmp)


def _limits(path: Path) -> tuple[int, int]:
    """(NAME_MAX, PATH_MAX) in bytes of the file system ``path`` is (or would be) on: its nearest existing folder's."""
    folder = path
    while True:
        try:
            if os.path.isdir(folder):
                break
        except (OSError, ValueError):
            pass
        if folder == folder.parent:
            break
        folder = folder.parent
    limits = []
    for name, default in (("PC_NAME_MAX", NAME_MAX), ("PC_PATH_MAX", PATH_MAX)):
        try:
            value = os.pathconf(folder, name)
        except (OSError, ValueError, AttributeError):
            value = -1
        limits.append(value if value > 0 else default)
    return limits[0], limits[1]


def _size(text: str | os.PathLike[str]) -> int:
    return len(os.fsencode(text))


def name_length_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` is too long for its file system, in a few words ("its name is 300 bytes, more than the 255 a file
    name may have"), or None when every part of it fits. The one place that knows the limits."""
    p = Path(path)
    name_max, path_max = _limits(p)
    for part in p.parts:
        if part != p.anchor and _size(part) > name_max:
            what = "its name" if part == p.name else "the name of a folder in it"
            return f"{what} is {_size(part):,} bytes, more than the {name_max} a file name may have"
    if _size(p) >= path_max:
        return f"it is {_size(p):,} bytes long, more than the {path_max - 1} a path may have"
    return None


def _hidden_name(dest: Path, tail: str) -> str:
    """The head of a hidden name beside ``dest`` (``.NAME.``) that, followed by ``_RANDOM`` characters and ``tail``,
    fits the file system: NAME is cut (in bytes) where the whole would be too long, so that every name that fits has
    temporary and backup names that fit too. Raises :class:`OutputError` when even a cut name cannot fit."""
    name_max, path_max = _limits(dest)
    fixed = 2 + _RANDOM + _size(tail)
    room = name_max - fixed
    if dest.parent != Path("."):  # the path given to the kernel: the folder as given, a slash, the name
        room = min(room, path_max - 1 - _size(dest.parent) - 1 - fixed)
    raw = os.fsencode(dest.name)
    if room < min(len(raw), 1):
        raise OutputError(f"Cannot write {dest}: the path is too long for a temporary file beside it; choose a shorter path.")
    return "." + os.fsdecode(raw[:room]) + "."


def _temp_tail(dest: Path, suffix: str | None) -> str:
    tail = suffix or dest.suffix or ".tmp"
    return tail if _size(tail) <= _TAIL else ".tmp"


def check_name_length(path: str | os.PathLike[str], label: str = "Output path") -> None:
    """Refuse, in one sentence, an output whose name, path or temporary names beside it do not fit the file system
    (``ENAMETOOLONG``), so that an audit never runs and then cannot save."""
    problem = name_length_problem(path)
    if problem is not None:
        raise OutputError(f"{label} {path} cannot be written: {problem}; choose a shorter name.")
    _hidden_name(Path(path), "." + "x" * (_TAIL - 1))  # the longest tail a temporary name can have


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
    check_name_length(dest)
    check_destination(dest)
    parent = dest.parent
    ensure_writable_dir(parent)
    try:
        tmp = _create_temp(dest, _temp_tail(dest, suffix))
    except OSError as exc:
        raise OutputError(f"Cannot write {dest} ({_reason(exc)}); choose another output location.") from None
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


def _create_temp(dest: Path, tail: str) -> Path:
    """A new empty file ``.NAME.XXXXXXXX<tail>`` beside ``dest`` (mode 0600, as mkstemp makes it), whose name fits the
    file system whenever ``dest``'s does (:func:`_hidden_name`)."""
    head = _hidden_name(dest, tail)
    for _ in range(100):
        tmp = dest.with_name(head + secrets.token_hex(_RANDOM // 2) + tail)
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600))
        except FileExistsError:
            continue
        return tmp
    raise OSError(errno.EEXIST, "no free temporary name")


class _Stage:
    """The outputs of one run, each complete in its temporary file, waiting to be renamed together."""

    def __init__(self) -> None:
        self.files: dict[Path, Path] = {}  # destination -> finished temporary file
        self.folders: list[Path] = []  # folders this run created, outermost first
        self.stdout: list[str] = []
        self.stale: list[Path] = []  # files of an earlier run to remove with this run's renames
        self.kept: list[Path] = []  # files at names of this run's kind that it did not write and cannot tell it made

    @property
    def removed(self) -> list[Path]:
        """The stale files removed (after the commit) or to be removed (before it)."""
        return list(self.stale)

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
        self.stale.clear()
        self.kept.clear()
        for folder in reversed(self.folders):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if still empty: never a folder something else wrote into

    def commit(self) -> None:
        """Rename every file into place, or, if one rename fails, put back what the others replaced."""
        for dest in self.files:
            check_destination(dest)
        self.stale = [p for p in self.stale if p not in self.files and _is_regular(p)]  # never anything but a file
        self.kept = [p for p in self.kept if p not in self.files]
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
            for dest in self.stale:  # last: a failed rename above has removed nothing
                backup = _hard_link_backup(dest)
                try:
                    os.unlink(dest)
                except OSError:
                    if backup is not None:
                        backup.unlink(missing_ok=True)
                    raise
                done.append((dest, True, backup))
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
        for folder in {dest.parent for dest in [*self.files, *self.stale]}:
            _fsync_dir(folder)
        texts, self.stdout = self.stdout, []
        for text in texts:  # last, after every file is in place
            write_stdout(text)


def _hard_link_backup(dest: Path) -> Path | None:
    """A second name for the file about to be replaced, to restore it if a later rename of the run fails (None where
    the file system has no hard links: that file then cannot be put back)."""
    try:
        backup = dest.with_name(f"{_hidden_name(dest, '.bak')}{secrets.token_hex(_RANDOM // 2)}.bak")
        os.link(dest, backup, follow_symlinks=False)
    except (OSError, OutputError):
        return None
    return backup


_STAGE: contextvars.ContextVar[_Stage | None] = contextvars.ContextVar("shiftaudit_output_stage", default=None)


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def remove_stale(path: str | os.PathLike[str]) -> None:
    """Remove ``path``, a file an earlier run left that this run replaces by nothing, together with this run's
    renames inside :func:`all_or_nothing` (a failed run removes nothing; a failed rename puts it back); at once
    outside one. Anything but a regular file is left alone."""
    p = Path(path)
    stage = _STAGE.get()
    if stage is not None:
        if p not in stage.stale:
            stage.stale.append(p)
    elif _is_regular(p):
        p.unlink()


def keep_stale(path: str | os.PathLike[str]) -> None:
    """Note ``path``, a file at one of this run's names that it did not write and will not remove (nothing says
    shiftaudit made it): the caller names it after the run (``kept``)."""
    stage = _STAGE.get()
    if stage is not None and Path(path) not in stage.kept:
        stage.kept.append(Path(path))


@contextlib.contextmanager
def all_or_nothing() -> Iterator[_Stage]:
    """Write every output of the block, or none: files are renamed into place at its end, after all were written.

    On any failure (a full disk, a picture that cannot be drawn, Ctrl-C) the temporary files and the folders the
    block created are removed and previous files stay as they were. Nested blocks join the outer one. Yields the
    run's outputs: after the block, ``removed`` lists the stale files of an earlier run it removed (:func:`remove_stale`).
    """
    outer = _STAGE.get()
    if outer is not None:
        yield outer
        return
    stage = _Stage()
    token = _STAGE.set(stage)
    try:
        yield stage
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
    """Standard output as an output (``--json -``): inside :func:`all_or_nothing` it is written after the files, so
    a reader that went away (``BrokenPipeError``) or a closed stdout can cost that text, never a file."""
    stage = _STAGE.get()
    if stage is not None:
        stage.stdout.append(text)
        return
    if sys.stdout is None:  # started with stdout closed (`>&-`): nobody reads it, like a reader that left
        raise BrokenPipeError(errno.EPIPE, "standard output is closed")
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
