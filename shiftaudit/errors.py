"""User-facing errors.

Anything the user can fix (a wrong path, a corrupt file, a flag that makes no sense) is raised as a
:class:`ShiftAuditError` whose message is one plain sentence. The CLI prints that sentence and exits with
``exit_code``; the Python API lets it propagate, so library users can catch it.
"""

from __future__ import annotations

import re


class ShiftAuditError(Exception):
    """A problem with the user's input or settings, said in one sentence (CLI exit code 2)."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if not self.hint:
            return self.message
        return f"{self.message.rstrip('.')} ({self.hint})."  # still one sentence: the hint goes inside it


class CheckpointError(ShiftAuditError):
    """The checkpoint cannot be read or does not fit the architecture."""


class DataError(ShiftAuditError):
    """The data source cannot be read or does not fit the model."""


class UsageError(ShiftAuditError):
    """Flags or arguments that contradict each other or are out of range."""


class OutputError(ShiftAuditError):
    """An output file or folder cannot be written (a read-only place, a file where a folder should be, a full disk)."""


class ModelError(ShiftAuditError):
    """The model misbehaves on valid input (wrong output shape, fails to run)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (what ``timeout``, schedulers and ``kill`` send), raised like Ctrl-C so an audit stops the same way:
    whole batches only, progress saved for ``--resume``, one line, exit code 143 (128 + 15) instead of 130."""


class AuditInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped an audit between two batches: how far it got, and where its progress was saved.

    A KeyboardInterrupt still (code that stops on Ctrl-C keeps working); ``terminated`` says it was SIGTERM.
    ``resume_path``: the state file an audit with the same settings continues from, or None without ``resume``.
    """

    unit = "images"

    def __init__(self, done: int, total: int, resume_path: str | None = None, terminated: bool = False) -> None:
        super().__init__(f"interrupted after {done} of {total} {self.unit}")
        self.done, self.total, self.resume_path, self.terminated = done, total, resume_path, terminated

    @property
    def progress(self) -> tuple[int, int]:
        return self.done, self.total


class TrainingInterrupted(AuditInterrupted):
    """Ctrl-C or SIGTERM stopped a fine-tuning run at a step boundary; with a resume file, its state was saved there."""

    unit = "steps"


def first_line(exc: BaseException, default: str | None = None) -> str:
    """The first line of an exception's message, for one-sentence errors (``default``: the exception's type name)."""
    text = str(exc).strip()
    if text:
        return text.splitlines()[0]
    return type(exc).__name__ if default is None else default


def failure_text(exc: BaseException) -> str:
    """What an exception escaping the user's code says, in a few words; an exit (``SystemExit(0)``, whose text is
    just ``0``) is named by its type so that the sentence says the model tried to end the run."""
    if isinstance(exc, Exception):
        return first_line(exc)
    return f"it raised {(repr(exc).splitlines() or [type(exc).__name__])[0][:200]}"


# C0 and C1 controls (ESC, CSI U+009B, NEL U+0085, ...), line and paragraph separators, the bidirectional overrides,
# embeddings and isolates (U+202E shows a name backwards), lone surrogates (undecodable bytes of a file name) and the
# two non-characters that XML 1.0 forbids.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff\ufffe\uffff]")


def one_line(text: str) -> str:
    """``text`` with control characters shown as escapes (``\\n``, ``\\x1b``, ``\\u202e``): a newline in a file name
    must not split a one-line error, an escape sequence must not drive the terminal, a bidi override must not reverse
    what follows, an undecodable byte must not crash the printer. The one escaping rule for every user string shiftaudit
    shows: terminal lines, HTML pages and JUnit XML (the result is always valid XML 1.0 character data)."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)
