"""File safety in one place: what stands at a path, an OS error in words, reading a user's file, writing outputs.

- :func:`node_kind` names what stands at a path when it is not a regular file; :func:`reason` says why an OS call
  failed. Every message about a file uses them.
- :func:`open_regular`, :func:`read_regular` and :func:`mapped` read a regular file and nothing else: anything else is
  refused before it is opened and again on the open descriptor (``O_NONBLOCK``), so a FIFO or device never blocks a
  run and a file that grows past its limit never fills memory. A refusal is :class:`Refused`, a few words that follow
  the file's name ("does not exist", "is a FIFO (named pipe), not a regular file").
- :func:`check_output` decides, before any work, whether an output may be written: a regular file or nothing (never a
  FIFO, device, socket, symlink or folder: a rename replaces whatever it lands on), in a folder where a file can be
  created, with a name (and temporary names beside it) that the file system takes.
- Every output is staged (:func:`all_or_nothing`; a lone write is a run of one). :func:`atomic_path` yields a temporary
  file beside the destination; it gets the umask's mode and is flushed to disk, and every file of the run is renamed
  into place once all were written. A folder the run creates is built under a temporary name beside its place and
  renamed into place the same way, so a failed run leaves no folder behind. In a folder that exists (a reused
  ``--out``) each file is staged beside its target, so the user's own files are never touched; an earlier run's
  picture is removed with the renames (:func:`remove_stale`). If a rename fails, what the run had replaced or
  removed is put back from a hard link made just before.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import json
import mmap
import os
import secrets
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from shiftaudit.errors import OutputError

PathLike = str | os.PathLike[str]
_KINDS = (
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def reason(exc: BaseException) -> str:
    """Why an OS call failed, in a few lower-case words ("permission denied"): the system's text, else the message."""
    return (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__).rstrip(".").lower()


def _kind(mode: int) -> str | None:
    """What an ``st_mode`` is when it is not a regular file ("a folder", "a socket", ...); None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _KINDS if test(mode)), "a special file")


def node_kind(path: PathLike, *, follow: bool = False) -> str | None:
    """What stands at ``path`` when it is not a regular file; None for a regular file or nothing. A symbolic link is
    reported as one unless ``follow``. Any other failure (no permission, a loop) is raised."""
    try:
        return _kind(os.stat(path, follow_symlinks=follow).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return None


# -- reading ------------------------------------------------------------------------------------------------------
def first_repeat(paths: list[Path]) -> tuple[Path, Path] | None:
    """The first two of ``paths`` that are one file (the same name twice, or a name and a link to it), or None.
    Unreadable paths are skipped: opening them says why."""
    seen: dict[tuple[int, int], Path] = {}
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        first = seen.setdefault((st.st_dev, st.st_ino), path)
        if first is not path:
            return first, path
    return None


class Refused(OSError):
    """A file that cannot be read as asked; the message follows its name: ``f"Report {path} {exc}."``."""


@contextlib.contextmanager
def open_regular(path: PathLike, *, follow: bool = True) -> Iterator[tuple[int, int]]:
    """A regular file open for reading, as (descriptor, size); anything else is :class:`Refused` unread."""
    fd, size = -1, 0
    try:
        kind = node_kind(path, follow=follow)
        if kind is None:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | (0 if follow else _NOFOLLOW))
            st = os.fstat(fd)  # again on what was opened: the path may have changed since
            kind, size = _kind(st.st_mode), st.st_size
    except FileNotFoundError:
        raise Refused("does not exist") from None
    except OSError as exc:
        raise Refused(f"cannot be read ({reason(exc)})") from None
    try:
        if kind is not None:
            raise Refused(f"is {kind}, not a regular file")
        yield fd, size
    finally:
        if fd >= 0:
            os.close(fd)


def read_regular(path: PathLike, max_bytes: int, *, head: bool = False, follow: bool = True) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (``head``: its first ``max_bytes``, whatever its size),
    read once: what a check reads is what the loader gets, even if the file changes on disk meanwhile."""
    with open_regular(path, follow=follow) as (fd, size):
        if size > max_bytes and not head:
            raise Refused(f"is {size:,} bytes, more than the {max_bytes:,} allowed")
        limit = max_bytes if head else max_bytes + 1
        chunks: list[bytes] = []
        try:
            while limit and (chunk := os.read(fd, min(limit, 1 << 24))):
                chunks.append(chunk)
                limit -= len(chunk)
        except OSError as exc:
            raise Refused(f"cannot be read ({reason(exc)})") from None
    if not head and not limit:
        raise Refused(f"is more than the {max_bytes:,} bytes allowed")
    return b"".join(chunks)


@contextlib.contextmanager
def mapped(path: PathLike) -> Iterator[mmap.mmap | bytes]:
    """A regular file's bytes as a read-only map (b'' for an empty file): checks that read a few parts of a large file."""
    with open_regular(path) as (fd, size):
        if size == 0:
            yield b""
            return
        with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as mm:
            yield mm


# -- names and destinations ---------------------------------------------------------------------------------------
NAME_MAX = 255  # when the file system cannot say (os.pathconf): Linux, macOS and Windows file systems
PATH_MAX = 4096  # bytes, with the terminating NUL
_RANDOM = 8  # random characters in a temporary (or backup) name
_TAIL = 32  # the longest suffix a temporary name keeps (a longer one becomes .tmp)


def _size(text: PathLike) -> int:
    return len(os.fsencode(text))


def _limits(path: Path) -> tuple[int, int]:
    """(NAME_MAX, PATH_MAX) in bytes of the file system ``path`` is (or would be) on: its nearest existing folder's."""
    folder = path
    while folder != folder.parent and not os.path.isdir(folder):
        folder = folder.parent
    limits = []
    for name, default in (("PC_NAME_MAX", NAME_MAX), ("PC_PATH_MAX", PATH_MAX)):
        try:
            value = os.pathconf(folder, name)
        except (OSError, ValueError, AttributeError):
            value = -1
        limits.append(value if value > 0 else default)
    return limits[0], limits[1]


def name_length_problem(path: PathLike) -> str | None:
    """Why ``path`` is too long for its file system, in a few words ("its name is 300 bytes, more than the 255 a file
    name may have"), or None when every part of it fits."""
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
    """The head (``.NAME.``) of a hidden name beside ``dest`` that, with ``_RANDOM`` characters and ``tail`` after it,
    fits the file system: NAME is cut (in bytes) so that every name that fits has temporary and backup names that
    fit too. An :class:`OutputError` when even a cut name cannot fit."""
    name_max, path_max = _limits(dest)
    fixed = 2 + _RANDOM + _size(tail)
    room = name_max - fixed
    if dest.parent != Path("."):  # the path given to the kernel: the folder as given, a slash, the name
        room = min(room, path_max - 1 - _size(dest.parent) - 1 - fixed)
    raw = os.fsencode(dest.name)
    if room < min(len(raw), 1):
        raise OutputError(f"Cannot write {dest}: the path is too long for a temporary file beside it; choose a shorter path.")
    return "." + os.fsdecode(raw[:room]) + "."


def check_name_length(path: PathLike, label: str = "Output path") -> None:
    """Refuse, in one sentence, an output whose name, path or temporary names beside it do not fit the file system
    (``ENAMETOOLONG``), so that an audit never runs and then cannot save. A folder the run creates is built under a
    longer name beside its place (:func:`make_folder`): the path is checked as it is then, too."""
    p = top = Path(path)
    while not os.path.lexists(top.parent) and top.parent != top:
        top = top.parent
    problem = name_length_problem(p)
    if problem is None and top != p:
        p = top.with_name(_hidden_name(top, "") + "x" * _RANDOM) / p.relative_to(top)
        problem = name_length_problem(p)
    if problem is not None:
        raise OutputError(f"{label} {path} cannot be written: {problem}; choose a shorter name.")
    _hidden_name(p, "." + "x" * (_TAIL - 1))  # the longest tail a temporary name can have


def check_destination(path: PathLike, label: str = "Output path") -> None:
    """Refuse, in one sentence, to replace anything but a regular file.

    A rename replaces whatever it lands on: over a FIFO, device node or socket it would swap it for a regular file
    (as root, ``--json /dev/null`` would delete /dev/null for the whole machine). A symlink is refused even when it
    points to a regular file, so an output never lands anywhere but the path given. ``-`` is refused too: it means
    standard output, and a file of that name would only confuse.
    """
    if str(path) == "-":
        raise OutputError(f"{label} - would create a file named '-'; only --json takes '-' (standard output), give a file path.")
    try:
        kind = node_kind(path)
    except OSError as exc:
        raise OutputError(f"Cannot use output path {path} ({reason(exc)}); choose another output location.") from None
    if kind == "a folder":
        raise OutputError(f"{label} {path} is a folder; pass a file path, not a folder.")
    if kind is not None:
        raise OutputError(
            f"{label} {path} is {kind}, not a regular file; shiftaudit only replaces regular files, so choose another "
            "output path."
        )


def _not_a_folder(path: Path, label: str) -> None:
    if os.path.lexists(path) and not path.is_dir():  # a symlink to a folder is a folder: nothing is replaced there
        raise OutputError(f"{label} {path} is {node_kind(path) or 'a file'}, not a folder; choose another output location.")


def check_output(path: PathLike, label: str, *, folder: bool = False, names: tuple[str, ...] = ()) -> None:
    """Refuse, before any work, an output that cannot be written, creating nothing: a file (or, with ``folder``, a
    folder and its files ``names``) that is a regular file or nothing (:func:`check_destination`), with names that
    fit, under a nearest existing folder where a file can be made (an anonymous temporary file is tried, so that
    pseudo file systems such as /proc are caught too)."""
    p = Path(path)  # as the writers will use it: a quoted '~' is a folder named '~', as for any other tool
    if folder and str(p) == "-":
        raise OutputError(
            f"{label} - would create a folder named '-'; only --json takes '-' (standard output), give a folder path."
        )
    files = [p / name for name in names] if folder else [p]
    for file in files:
        check_name_length(file, label)
    if folder:
        _not_a_folder(p, label)
    for file in files:
        check_destination(file, label)
    ancestor = p if folder else p.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"{label} {p} cannot be written: {ancestor} is a file, not a folder.")
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as exc:
        raise OutputError(f"{label} {p} cannot be written ({reason(exc)}); choose another output location.") from None


# -- writing: every output of a run, or none ----------------------------------------------------------------------
def _umask() -> int:
    """The process umask, read without changing it where /proc allows (``os.umask`` can only read it by setting it)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync(path: Path, *, folder: bool = True) -> None:
    """Flush a file (or a folder, after a rename) to disk; some systems cannot sync a folder, which costs only
    durability."""
    with contextlib.suppress(*((OSError,) if folder else ())):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _new_beside(dest: Path, tail: str, make: Callable[[Path], None]) -> Path:
    """``make`` a new name ``.NAME.XXXXXXXX<tail>`` beside ``dest`` that fits the file system (:func:`_hidden_name`)."""
    head = _hidden_name(dest, tail)
    for _ in range(100):
        new = dest.with_name(head + secrets.token_hex(_RANDOM // 2) + tail)
        try:
            make(new)
        except FileExistsError:
            continue
        return new
    raise OSError(errno.EEXIST, "no free temporary name")


def _new_file(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600))


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


class Outputs:
    """The outputs of one run, each complete under a temporary name beside its place, renamed into place together."""

    def __init__(self) -> None:
        self.folders: dict[Path, Path] = {}  # a folder this run creates -> the temporary folder it is built in
        self.files: dict[Path, Path | None] = {}  # a file in a folder that exists -> its temporary; None: remove it
        self.backups: list[Path] = []
        self.stdout: list[str] = []
        self.kept: list[Path] = []  # files at names of this run's kind that it did not write and cannot tell it made
        self.removed: list[Path] = []  # after the commit: the files of an earlier run it removed (:func:`remove_stale`)

    def where(self, path: Path) -> Path:
        """Where ``path`` is while the run lasts: inside the temporary folder of a folder it creates, or in place."""
        for dest, tmp in self.folders.items():
            if path.is_relative_to(dest):
                return tmp / path.relative_to(dest)
        return path

    def discard(self) -> None:
        for folder in self.folders.values():
            shutil.rmtree(folder, ignore_errors=True)
        for tmp in [*self.files.values(), *self.backups]:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    tmp.unlink()
        self.folders, self.files, self.backups, self.kept = {}, {}, [], []

    def commit(self) -> None:
        """Rename everything into place, or, if one rename fails, put back what the others replaced."""
        self.files = {d: t for d, t in self.files.items() if t is not None or _is_regular(d)}  # never anything but a file
        for dest, tmp in self.files.items():
            if tmp is not None:
                check_destination(dest)  # again just before the rename: something may have appeared there meanwhile
        for dest in self.folders:
            _not_a_folder(dest, "Output path")
        self.kept = [p for p in self.kept if p not in self.files]
        done: list[tuple[Path, Path | None, Path | None]] = []  # (destination, its temporary, hard-link backup)
        moves = [*self.folders.items(), *sorted(self.files.items(), key=lambda move: move[1] is None)]  # removals last
        try:
            for dest, tmp in moves:
                backup = self._backup(dest)
                os.unlink(dest) if tmp is None else os.replace(tmp, dest)
                done.append((dest, tmp, backup))
        except BaseException as exc:  # a failed rename, or Ctrl-C between two
            for put, tmp, backup in reversed(done):
                with contextlib.suppress(OSError):
                    if backup is not None:
                        os.replace(backup, put)
                    elif tmp is not None:
                        os.replace(put, tmp)  # back to its temporary name, removed with the others
            self.discard()
            if not isinstance(exc, OSError):
                raise
            raise OutputError(
                f"Cannot write {dest} ({reason(exc)}); no output of this run was written, previous files are unchanged."
            ) from None
        for backup in self.backups:
            backup.unlink(missing_ok=True)
        for folder in {dest.parent for dest, _ in moves}:
            _fsync(folder)
        self.removed = [dest for dest, tmp in moves if tmp is None]
        self.folders, self.files, self.backups = {}, {}, []
        texts, self.stdout = self.stdout, []
        for text in texts:  # last, after every file is in place
            write_stdout(text)

    def _backup(self, dest: Path) -> Path | None:
        """A second name for the file about to be replaced, to restore it if a later rename of the run fails (None for
        nothing there, or where the file system has no hard links: that file then cannot be put back)."""
        if not os.path.isfile(dest):
            return None
        try:
            backup = _new_beside(dest, ".bak", lambda new: os.link(dest, new, follow_symlinks=False))
        except (OSError, OutputError):
            return None
        self.backups.append(backup)
        return backup


_RUN: contextvars.ContextVar[Outputs | None] = contextvars.ContextVar("shiftaudit_outputs", default=None)


@contextlib.contextmanager
def all_or_nothing() -> Iterator[Outputs]:
    """Write every output of the block, or none: files are renamed into place at its end, after all were written.

    On any failure (a full disk, a picture that cannot be drawn, Ctrl-C) the temporary files and folders are removed
    and previous files stay as they were. Nested blocks join the outer one. Yields the run's outputs: after the block,
    ``removed`` lists the files of an earlier run it removed (:func:`remove_stale`) and ``kept`` those it left.
    """
    outer = _RUN.get()
    if outer is not None:
        yield outer
        return
    run = Outputs()
    token = _RUN.set(run)
    try:
        try:
            yield run
        finally:
            _RUN.reset(token)
        run.commit()
    except BaseException:
        run.discard()
        raise


def make_folder(directory: PathLike) -> Path:
    """The folder ``directory`` for this run's outputs, or a one-sentence error saying why it cannot be used. A folder
    that does not exist (from its first missing parent down) is built under a temporary name beside its place and
    renamed into place with the run's files: a failed run leaves no folder. One that exists is used as it is."""
    path = Path(directory)
    _not_a_folder(path, "Output path")
    with all_or_nothing() as run:
        try:
            if run.where(path) == path and not os.path.lexists(path):
                top = path
                while not os.path.lexists(top.parent):
                    top = top.parent
                run.folders[top] = _new_beside(top, "", os.mkdir)
            run.where(path).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"Cannot create output directory {path} ({reason(exc)}); choose another output location.") from None
    return path


@contextlib.contextmanager
def atomic_path(destination: PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``destination``, renamed into place with the run's other outputs when the block
    ends (at once for a lone write), deleted on failure.

    Any exception (Ctrl-C included) leaves ``destination`` as it was. An ``OSError`` while creating, writing or
    renaming (a read-only or pseudo file system, a full disk) becomes a one-sentence :class:`OutputError`.
    """
    dest = Path(destination)
    check_name_length(dest)
    check_destination(dest)
    tail = suffix or dest.suffix or ".tmp"
    tail = tail if _size(tail) <= _TAIL else ".tmp"
    with all_or_nothing() as run:
        make_folder(dest.parent)
        here = run.where(dest)
        try:
            tmp = _new_beside(here, tail, _new_file)
        except OSError as exc:
            raise OutputError(f"Cannot write {dest} ({reason(exc)}); choose another output location.") from None
        try:
            yield tmp
            os.chmod(tmp, 0o666 & ~_umask())  # the mode any tool would create it with (it was made 0600)
            _fsync(tmp, folder=False)  # on disk before its name: a crash after "wrote" leaves no empty file
            if here != dest:  # in a folder this run builds: in place now, seen when the folder is renamed
                os.replace(tmp, here)
                _fsync(here.parent)
            else:
                old = run.files.get(dest)
                if old is not None:  # written twice in one run: the last version wins
                    old.unlink(missing_ok=True)
                run.files[dest] = tmp
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise OutputError(f"Cannot write {dest} ({reason(exc)}); the previous file, if any, is unchanged.") from None
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise


def remove_stale(path: PathLike) -> None:
    """Remove ``path``, a file an earlier run left that this run replaces by nothing, with this run's renames (a failed
    run removes nothing; a failed rename puts it back). Anything but a regular file is left alone."""
    with all_or_nothing() as run:
        run.files.setdefault(Path(path), None)


def keep_stale(path: PathLike) -> None:
    """Note ``path``, a file at one of this run's names that it did not write and will not remove (nothing says
    shiftaudit made it): the caller names it after the run (``kept``)."""
    with all_or_nothing() as run:
        if Path(path) not in run.kept:
            run.kept.append(Path(path))


def pending(path: PathLike) -> Path:
    """Where the content of ``path`` is now: its finished temporary file inside :func:`all_or_nothing`, else the path
    itself. A later output of a run may read an earlier one (the HTML page embeds the pictures)."""
    run, p = _RUN.get(), Path(path)
    return p if run is None else run.files.get(p) or run.where(p)


def write_stdout(text: str) -> None:
    """Standard output as an output (``--json -``): inside :func:`all_or_nothing` it is written after the files, so
    a reader that went away (``BrokenPipeError``) or a closed stdout can cost that text, never a file."""
    run = _RUN.get()
    if run is not None:
        run.stdout.append(text)
        return
    if sys.stdout is None:  # started with stdout closed (`>&-`): nobody reads it, like a reader that left
        raise BrokenPipeError(errno.EPIPE, "standard output is closed")
    sys.stdout.write(text)
    sys.stdout.flush()


def write_bytes_atomic(destination: PathLike, data: bytes) -> Path:
    with atomic_path(destination) as tmp:
        tmp.write_bytes(data)
    return Path(destination)


def write_text_atomic(destination: PathLike, text: str) -> Path:
    return write_bytes_atomic(destination, text.encode("utf-8"))


def write_json_atomic(destination: PathLike, obj: Any) -> Path:
    """The JSON file, or standard output when ``destination`` is ``-``."""
    text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n"
    if str(destination) == "-":
        write_stdout(text)
        return Path("-")
    return write_text_atomic(destination, text)
