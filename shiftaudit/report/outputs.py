"""The report folder (``--out DIR``): the JSON report, and the pictures and HTML page when they are available.

A folder used again holds only the new run's report: a picture of an earlier run that this run does not draw (the
per-layer heatmaps of a run with ``--layers``, before one without) is removed together with the new files' renames,
all or nothing. Only a regular file at one of the report's picture names that shiftaudit drew (its PNG Software text
says so) is removed; anything else is left, and named (:attr:`~shiftaudit.files.Outputs.kept`).
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shiftaudit.errors import UsageError
from shiftaudit.files import Refused, all_or_nothing, keep_stale, make_folder, read_regular, remove_stale, write_text_atomic
from shiftaudit.report.html import render_side_by_side_html, write_html_report
from shiftaudit.result import AuditResult

PictureDraw = Callable[[AuditResult, Path, Any], "Path | None"]


@dataclass(frozen=True)
class Picture:
    """One picture of a report folder: its file name, and what draws it (None when the result has nothing to show:
    a missing metric means a missing picture, not an error)."""

    file: str
    draw: PictureDraw


_PICTURES: dict[str, Picture] = {}


def register_picture(file: str, draw: PictureDraw) -> Picture:
    """Add a picture to every report folder (``eval --out``, ``patch --eval --out``, ``demo --out``), in the order
    registered; the CLI checks its file before the audit runs like every other output."""
    _PICTURES[file] = picture = Picture(file, draw)
    return picture


def report_files() -> tuple[str, ...]:
    """Every file write_report_dir may write: the CLI checks each of them before the audit runs."""
    return ("report.json", *_PICTURES, "report.html")


def write_pictures(result: AuditResult, out: Path, dataset: Any = None) -> list[Path]:
    """Every registered picture the result can give."""
    drawn = [picture.draw(result, out / picture.file, dataset) for picture in _PICTURES.values()]
    return [p for p in drawn if p is not None]


def _figures() -> Any:
    from shiftaudit.report import figures  # local: matplotlib: only when pictures are drawn

    return figures


def _layers(result: AuditResult, path: Path, dataset: Any) -> Path | None:
    if "layers" not in result.metrics:
        return None
    from shiftaudit.report.heatmaps import plot_layer_heatmaps  # local: matplotlib

    return plot_layer_heatmaps(result.metrics["layers"], path)


register_picture("adversarial.png", lambda r, p, d: _figures().plot_adversarial_curve(r, p))
register_picture("variation.png", lambda r, p, d: _figures().plot_variation_distribution(r, p))
register_picture("accuracy_map.png", lambda r, p, d: _figures().plot_accuracy_map(r, p))
register_picture("flips.png", lambda r, p, d: _figures().plot_flip_examples(r, p, dataset=d))
register_picture(
    "consistency.png",  # without labels: the picture that needs none
    lambda r, p, d: None if r.data.get("labelled", True) else _figures().plot_consistency_histogram(r, p),
)
register_picture("layers.png", _layers)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_HEAD_BYTES = 1 << 20  # text chunks come before the pixels; a picture's first MiB holds them


def drawn_by_shiftaudit(path: str | Path) -> bool:
    """Whether ``path`` is a regular file, a PNG whose Software text (before its pixels) is shiftaudit's. Read without
    following a link or blocking on a FIFO, at most :data:`PNG_HEAD_BYTES`; anything unreadable is not ours."""
    from shiftaudit.report.plotting import PNG_METADATA  # local: matplotlib

    try:
        head = read_regular(path, PNG_HEAD_BYTES, head=True, follow=False)
    except Refused:
        return False
    if not head.startswith(PNG_SIGNATURE):
        return False
    at = len(PNG_SIGNATURE)
    while at + 8 <= len(head):
        length, kind = struct.unpack(">I4s", head[at : at + 8])
        body = head[at + 8 : at + 8 + length]
        if kind == b"IDAT" or len(body) < length:
            return False
        text = None
        if kind == b"tEXt":
            text = body
        elif kind == b"zTXt" and b"\0" in body:
            key, _, packed = body.partition(b"\0")
            with contextlib.suppress(zlib.error):
                text = key + b"\0" + zlib.decompress(packed[1:], bufsize=1024)[:1024]
        if text is not None:
            key, _, value = text.partition(b"\0")
            if key == b"Software":
                return value.decode("latin-1") == PNG_METADATA["Software"]
        at += 12 + length
    return False


def remove_stale_pictures(folder: str | Path, names: Iterable[str], written: Iterable[str | Path]) -> None:
    """Remove, with this run's outputs, the pictures among ``names`` in ``folder`` that an earlier run drew and this
    run did not (``written``); a file at such a name that shiftaudit did not draw is kept and named."""
    done = {Path(p) for p in written}
    for name in names:
        path = Path(folder) / name
        if path in done or not os.path.lexists(path):
            continue
        if drawn_by_shiftaudit(path):
            remove_stale(path)
        else:
            keep_stale(path)


def write_report_dir(result: AuditResult, out_dir: str | Path, dataset: Any = None) -> list[Path]:
    """Write everything a report folder holds, all or nothing (one failed picture leaves no half-new folder); returns
    the files written. Pictures an earlier run left there that this run does not draw are removed with them
    (:func:`remove_stale_pictures`).

    ``dataset`` (optional, the audited data) lets the flip-example picture show the images themselves.
    """
    if "sequential" in result.metrics:
        raise UsageError("A sequential gate result holds only the gated estimates, nothing to draw; audit with exact=True.")
    with all_or_nothing():
        out = make_folder(out_dir)
        written = [result.save_json(out / "report.json")]
        pictures = write_pictures(result, out, dataset)
        written += pictures
        written.append(write_html_report(result, out / "report.html", pictures))
        remove_stale_pictures(out, _PICTURES, written)
    return written


def side_by_side_files(folders: tuple[str, ...]) -> tuple[str, ...]:
    """Every file :func:`write_side_by_side_dir` may write for these sub-folders (for the CLI's up-front check)."""
    return ("report.html", *(f"{f}/{name}" for f in folders for name in report_files()))


def write_side_by_side_dir(
    runs: list[tuple[str, str, AuditResult]], out_dir: str | Path, *, title: str, intro: str = "", dataset: Any = None
) -> list[Path]:
    """Several runs on the same data (``patch --eval --out``): each run's full report folder (what ``eval --out``
    writes) in a sub-folder, and ``report.html`` with the runs side by side. ``runs``: (name, sub-folder, result).
    All or nothing; returns the files written."""
    with all_or_nothing():
        out = make_folder(out_dir)
        written: list[Path] = []
        pictures: list[list[Path]] = []
        for _name, folder, result in runs:
            files = write_report_dir(result, out / folder, dataset=dataset)
            written += files
            pictures.append([p for p in files if Path(p).suffix == ".png"])
        page = render_side_by_side_html([(n, r) for n, _f, r in runs], pictures, title=title, intro=intro)
        written.append(write_text_atomic(out / "report.html", page))
    return written
