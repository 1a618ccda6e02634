"""Progress for the engine's Progress protocol (start/advance/stop): a rich live bar on a terminal, plain lines
elsewhere.

A CI log or a redirected stderr cannot redraw a bar: rich then shows nothing until the end, and a long audit looks
hung. There a plain line is printed instead, at most every ``every_s`` seconds, or when another tenth of the images
is done (no more often than every ``min_gap_s`` seconds: a run of a few seconds prints nothing).
"""

from __future__ import annotations

import time

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from shiftaudit.cli.common import err_console
from shiftaudit.errors import one_line
from shiftaudit.report.terminal import sig


class RichProgress:
    """``plain``: None picks by whether stderr is a terminal; True/False forces plain lines or the live bar."""

    def __init__(self, enabled: bool = True, plain: bool | None = None, every_s: float = 10.0, min_gap_s: float = 5.0) -> None:
        self.enabled = enabled
        self.plain = plain
        self.every_s = every_s
        self.min_gap_s = min_gap_s
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._lines: PlainLines | None = None
        self.unit = "images"  # what is counted; the sequential gate counts forward passes

    def start(self, total: int, description: str) -> None:
        if not self.enabled:
            return
        description = one_line(description)  # it may name the user's data: shown escaped, on the bar and in plain lines
        plain = (not err_console.is_terminal) if self.plain is None else self.plain
        if plain:
            self._lines = PlainLines(total, description, self.every_s, self.min_gap_s, self.unit)
            return
        self._progress = Progress(
            TextColumn("{task.description}", style="progress.description", markup=False),  # text, never markup
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}", markup=False),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err_console,
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, rate="")

    def advance(self, n: int) -> None:
        if self._lines is not None:
            self._lines.advance(n)
            return
        if self._progress is None or self._task is None:
            return
        self._progress.advance(self._task, n)
        task = self._progress.tasks[0]
        speed = task.speed
        if speed:
            self._progress.update(self._task, rate=f"{sig(speed)} {'img' if self.unit == 'images' else self.unit}/s")

    def set_total(self, total: int) -> None:
        """A new length (a time budget will end the run first): the bar's ETA stays honest."""
        if self._lines is not None:
            self._lines.total = max(0, int(total))
        elif self._progress is not None and self._task is not None:
            self._progress.update(self._task, total=total)

    def describe(self, text: str) -> None:
        """A new description (fine-tuning shows its loss and held-out agreement)."""
        if self._lines is not None:
            self._lines.description = one_line(text)
        elif self._progress is not None and self._task is not None:
            self._progress.update(self._task, description=one_line(text))

    def stop(self) -> None:
        if self._lines is not None:
            self._lines.stop()
            self._lines = None
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class PlainLines:
    """One line per step of progress, e.g. ``auditing 500 images x 81 shifts: 250/500 images (50 %), 41.2 images/s,
    6.07 s elapsed, about 6.07 s left``."""

    def __init__(self, total: int, description: str, every_s: float, min_gap_s: float, unit: str = "images") -> None:
        self.total, self.description, self.unit = max(0, int(total)), description, unit
        self.every_s, self.min_gap_s = every_s, min_gap_s
        self.done = 0
        self.t0 = self.last = time.monotonic()
        self.printed = 0
        self.shown = 0  # images done at the last line

    def advance(self, n: int) -> None:
        before, self.done = self.done, self.done + n
        now = time.monotonic()
        new_tenth = self.total > 0 and (10 * self.done) // self.total > (10 * before) // self.total
        if now - self.last >= self.every_s or (new_tenth and now - self.last >= self.min_gap_s):
            self.emit(now)

    def stop(self) -> None:
        if self.printed and self.done != self.shown:  # a run that said how it went also says where it ended
            self.emit(time.monotonic())

    def emit(self, now: float) -> None:
        elapsed = now - self.t0
        rate = self.done / elapsed if elapsed > 0 else None
        share = f" ({100 * self.done // self.total} %)" if self.total else ""
        left = f", about {sig((self.total - self.done) / rate)} s left" if rate and self.done < self.total else ""
        line = (
            f"{self.description}: {self.done}/{self.total} {self.unit}{share}, {sig(rate)} {self.unit}/s, {sig(elapsed)} s "
            f"elapsed{left}"
        )
        err_console.print(Text(line), soft_wrap=True, highlight=False)
        self.last = now
        self.printed += 1
        self.shown = self.done
