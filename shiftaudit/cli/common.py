"""What every command shares: consoles, error handling, output checks, and loading the model and preprocessing."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any, TypeVar

import typer
from rich.console import Console
from rich.segment import Segment
from rich.text import Text

from shiftaudit.cli.flags import as_flags
from shiftaudit.errors import (
    AuditInterrupted,
    ShiftAuditError,
    Terminated,
    UsageError,
    failure_text,
    first_line,
    one_line,
)
from shiftaudit.files import check_output, name_length_problem

F = TypeVar("F", bound=Callable[..., Any])


class PlainConsole(Console):
    """A console that shows every string literally: no markup or emoji codes, control characters as escapes.

    Paths, folder, class and layer names reach tables, titles and messages; a ``[/]`` in a folder name must not crash
    the printer after an hour's audit, a ``:smile:`` must stay text, and a newline or escape sequence in a file name
    must neither split a line nor drive the terminal. Renderers escape user strings where they build their text
    (:func:`~shiftaudit.report.terminal.text`, so that columns are measured as shown); whatever still holds a control
    character when it is written is escaped here, the last step before the terminal.

    A reader that goes away (``shiftaudit eval ... | head -1``) ends what this console shows, never the run: rich's
    default raises ``SystemExit(1)``, which lost the report files and was taken for the model's own exit.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(highlight=False, markup=False, emoji=False, **kwargs)
        self.reader_gone = False

    def render_str(self, text: str, **kwargs: Any) -> Text:
        return super().render_str(one_line(text), **kwargs)

    def _render_buffer(self, buffer: Iterable[Segment]) -> str:
        return super()._render_buffer(
            segment if segment.control else Segment(_escape_lines(segment.text), segment.style) for segment in buffer
        )

    def on_broken_pipe(self) -> None:
        self.reader_gone = True
        if not quiet_stream(self.file):
            self.quiet = True


def _escape_lines(text: str) -> str:
    """``one_line`` for each line of rendered output: the newlines between lines are the console's own."""
    return text if text.isprintable() else "\n".join(one_line(line) for line in text.split("\n"))


def quiet_stream(stream: IO[str] | None) -> bool:
    """Point the file descriptor of a stream whose reader went away at /dev/null (Python's recipe for SIGPIPE), so that
    later writes and the flush at exit are silent instead of raising ``BrokenPipeError``. False for a stream without
    a descriptor (a test's capture)."""
    try:
        fd = stream.fileno()  # type: ignore[union-attr]
    except (AttributeError, OSError, ValueError):
        return False
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)
    return True


console = PlainConsole()
err_console = PlainConsole(stderr=True)


def hold_standard_streams() -> None:
    """Put /dev/null on a standard descriptor (0, 1, 2) that was closed (``shiftaudit eval ... >&-``). Left free, the
    next file opened would take its number, and whatever a library then writes to "stdout" would land in that file.
    Python has already set ``sys.stdout`` to None for it: what would be printed there is dropped."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def say_error(message: str) -> None:
    err_console.print(Text.assemble(("error: ", "bold red"), one_line(message)), soft_wrap=True)


def say_stale(outputs: Any, quiet: bool = False) -> None:
    """After a run's outputs are in place (``outputs``: what :func:`~shiftaudit.files.all_or_nothing` yielded): the
    pictures of an earlier run it removed from a reused report folder, and the files at its names that it left because
    nothing in them says shiftaudit drew them."""
    if quiet:
        return
    for path in outputs.removed:
        console.print(f"removed {path}: an earlier run's picture, which this run does not draw", soft_wrap=True)
    for path in outputs.kept:
        console.print(
            f"note: left {path} as it is: this run does not draw it, and nothing in it says shiftaudit did",
            style="dim",
            soft_wrap=True,
        )


def json_to_stdout(json_out: Path | None) -> None:
    """With ``--json -`` stdout carries the JSON alone: the tables and messages of this command go to stderr."""
    if json_out is not None and str(json_out) == "-":
        console.stderr = True


def handle_errors(fn: F) -> F:
    """Turn library errors into one sentence on stderr and an exit code: 2 for input/usage, 130 for Ctrl-C, 143 for
    SIGTERM, 3 for bugs.

    An exit raised by code shiftaudit runs (the model's ``sys.exit(0)``, a custom BaseException) is a failure too:
    passed through, it would end the command with its exit code and no report, which a CI gate reads as a pass.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with sigterm_as_interrupt():
                return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except ShiftAuditError as exc:
            say_error(as_flags(str(exc)))  # the library names parameters, the command line its flags
            raise typer.Exit(exc.exit_code) from None
        except BrokenPipeError:  # standard output's reader went away while it carried this command's output (--json -)
            quiet_stream(sys.stdout)  # every file output was already written: stdout comes last
            raise typer.Exit(141) from None  # 128 + SIGPIPE, what a shell reports for a writer whose reader left
        except KeyboardInterrupt as exc:
            err_console.print(Text(interrupted_message(exc)), soft_wrap=True)
            raise typer.Exit(143 if _terminated(exc) else 130) from None
        except Exception as exc:  # a bug, not the user's fault: still no traceback unless asked
            if os.environ.get("SHIFTAUDIT_DEBUG"):
                raise
            resource = _out_of_memory_message(exc) or _name_too_long_message(exc)
            if resource is not None:
                say_error(resource)
                raise typer.Exit(2) from None
            first = first_line(exc, "")
            say_error(
                f"internal error ({type(exc).__name__}: {first}); rerun with SHIFTAUDIT_DEBUG=1 for the traceback and report it."
            )
            raise typer.Exit(3) from None
        except BaseException as exc:  # SystemExit, GeneratorExit, ... from the model's code or a library it calls
            say_error(
                f"the model's code (or a library it calls) stopped the run: {failure_text(exc)}; that is a failure, not a pass."
            )
            raise typer.Exit(2) from None
        finally:
            console.stderr = False  # undo json_to_stdout

    return wrapper  # type: ignore[return-value]


def name_the_option_first() -> None:
    """Typer answers an out-of-range option with a usage box that starts with the usage line; put one line naming
    the option and the problem first (``error: Invalid value for '--pairs': ...``), then Typer's box."""
    from typer import rich_utils

    box = rich_utils.rich_format_error
    if getattr(box, "shiftaudit", False):
        return

    def show(exc: Any) -> None:
        if type(exc).__name__ != "NoArgsIsHelpError":
            first = (exc.format_message().strip().splitlines() or ["Invalid command line"])[0]
            say_error(first.replace(": Value error, ", ": ").rstrip(".") + ".")  # Typer's wording for a bad choice
        box(exc)

    show.shiftaudit = True  # type: ignore[attr-defined]
    rich_utils.rich_format_error = show  # type: ignore[assignment]  # Typer's own hook, replaced in place


@contextlib.contextmanager
def sigterm_as_interrupt() -> Any:
    """While a command runs, SIGTERM raises :class:`Terminated` (a KeyboardInterrupt) in the main thread.

    Python's default for SIGTERM is to die at once: an audit under ``timeout`` or a batch scheduler would lose its
    progress and leave no message. Raised like Ctrl-C, it stops between batches and the ``--resume`` state is saved.
    Further SIGTERMs are ignored while that happens (the save must finish); the old handler is restored after.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _out_of_memory_message(exc: BaseException) -> str | None:
    """Running out of memory is a resource limit the user can change, not a bug: say which knob to turn."""
    if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError, without importing torch here
        return (
            "The GPU ran out of memory outside the batched forward passes; free the GPU, pass a smaller --batch-size, or "
            "use --device cpu."
        )
    if isinstance(exc, MemoryError):
        return "The machine ran out of memory; pass a smaller --batch-size or --limit, or close other programs."
    return None


def _name_too_long_message(exc: BaseException) -> str | None:
    """A path the file system cannot take (``ENAMETOOLONG``: a model, --data or class map name over the limit) is the
    user's to shorten, not a bug. Outputs are checked before any work (:func:`check_outputs`); inputs end here."""
    if not (isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG):
        return None
    if exc.filename is None:
        return "A file name is too long for the file system; use a shorter name."
    name = os.fsdecode(exc.filename)
    return f"Cannot use {name}: {name_length_problem(name) or 'its name is too long for the file system'}; use a shorter name."


def interrupted_message(exc: BaseException) -> str:
    """One line for Ctrl-C or SIGTERM: how far the audit got (:class:`~shiftaudit.errors.AuditInterrupted`) and
    whether its progress was saved."""
    where = f" after {exc.done} of {exc.total} {exc.unit}" if isinstance(exc, AuditInterrupted) else ""
    saved = exc.resume_path if isinstance(exc, AuditInterrupted) else None
    how = "terminated (SIGTERM)" if _terminated(exc) else "interrupted"
    if saved:
        return f"{how}: stopped cleanly{where}; progress saved in {saved}: run the same command again to continue."
    return f"{how}: stopped cleanly{where}; no output file was left half-written."


def _terminated(exc: BaseException) -> bool:
    return isinstance(exc, Terminated) or bool(getattr(exc, "terminated", False))


def check_outputs(
    files: dict[str, Path | None],
    folders: dict[str, tuple[Path | None, tuple[str, ...]]] | None = None,
    stdout: tuple[str, ...] = ("--json",),
    inputs: list[Path | None] | None = None,
) -> None:
    """Check every output of a command before any work: each one (:func:`~shiftaudit.files.check_output`; ``-`` given
    to a flag in ``stdout`` is standard output), that no two of them name the same file, where one would silently
    replace the other, and that none replaces one of the command's ``inputs`` (a checkpoint or report it reads).
    ``folders``: flag -> (folder, its file names)."""
    targets = []
    for flag, path in files.items():
        if path is not None and not (flag in stdout and str(path) == "-"):
            check_output(path, flag)
            targets.append((flag, Path(path)))
    for flag, (folder, names) in (folders or {}).items():
        if folder is not None:
            check_output(folder, flag, folder=True, names=names)
            targets += [(flag, Path(folder) / name) for name in names]
    seen: dict[str, str] = {}
    for flag, path in targets:
        key = _file_key(path)
        if key in seen and seen[key] != flag:
            raise UsageError(f"{seen[key]} and {flag} both write {path}; give each output its own file.")
        seen.setdefault(key, flag)
    for source in inputs or []:
        if source is not None and _file_key(Path(source)) in seen:
            raise UsageError(
                f"{seen[_file_key(Path(source))]} {source} would replace an input of this command; give the output another name."
            )


def _file_key(path: Path) -> str:
    """One name per file: the real folder plus the file name (two spellings of one path compare equal)."""
    return os.path.join(os.path.realpath(path.parent), path.name)
