"""The report folder (``--out DIR``): the JSON report, and the pictures and HTML page when they are available."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shiftaudit.atomicio import all_or_nothing, ensure_writable_dir
from shiftaudit.result import AuditResult

# Every file write_report_dir may write: the CLI checks each of them before the audit runs.
REPORT_FILES = (
    "report.json",
    "adversarial.png",
    "variation.png",
    "accuracy_map.png",
    "flips.png",
    "layers.png",
    "consistency.png",
    "report.html",
)


def write_pictures(result: AuditResult, out: Path, dataset: Any = None) -> list[Path]:
    """Every picture the result can give (a missing metric means a missing picture, not an error)."""
    from shiftaudit.report.figures import (
        plot_accuracy_map,
        plot_adversarial_curve,
        plot_consistency_histogram,
        plot_flip_examples,
        plot_variation_distribution,
    )

    pictures = [
        plot_adversarial_curve(result, out / "adversarial.png"),
        plot_variation_distribution(result, out / "variation.png"),
        plot_accuracy_map(result, out / "accuracy_map.png"),
        plot_flip_examples(result, out / "flips.png", dataset=dataset),
    ]
    if not result.data.get("labelled", True):  # without labels: the pictures that need none
        pictures.append(plot_consistency_histogram(result, out / "consistency.png"))
    if "layers" in result.metrics:
        from shiftaudit.report.heatmaps import plot_layer_heatmaps

        pictures.append(plot_layer_heatmaps(result.metrics["layers"], out / "layers.png"))
    return [p for p in pictures if p is not None]


def write_report_dir(result: AuditResult, out_dir: str | Path, dataset: Any = None) -> list[Path]:
    """Write everything a report folder holds, all or nothing (one failed picture leaves no half-new folder); returns
    the files written.

    ``dataset`` (optional, the audited data) lets the flip-example picture show the images themselves.
    """
    from shiftaudit.report.html import write_html_report

    with all_or_nothing():
        out = ensure_writable_dir(out_dir)
        written = [result.save_json(out / "report.json")]
        pictures = write_pictures(result, out, dataset)
        written += pictures
        written.append(write_html_report(result, out / "report.html", pictures))
    return written


def side_by_side_files(folders: tuple[str, ...]) -> tuple[str, ...]:
    """Every file :func:`write_side_by_side_dir` may write for these sub-folders (for the CLI's up-front check)."""
    return ("report.html", *(f"{f}/{name}" for f in folders for name in REPORT_FILES))


def write_side_by_side_dir(runs: list[tuple[str, str, AuditResult]], out_dir: str | Path, *, title: str, intro: str = "",
                           dataset: Any = None) -> list[Path]:
    """Several runs on the same data (``patch --eval --out``): each run's full report folder (what ``eval --out``
    writes) in a sub-folder, and ``report.html`` with the runs side by side. ``runs``: (name, sub-folder, result).
    All or nothing; returns the files written."""
    from shiftaudit.atomicio import write_text_atomic
    from shiftaudit.report.html import render_side_by_side_html

    with all_or_nothing():
        out = ensure_writable_dir(out_dir)
        written: list[Path] = []
        pictures: list[list[Path]] = []
        for _name, folder, result in runs:
            files = write_report_dir(result, out / folder, dataset=dataset)
            written += files
            pictures.append([p for p in files if Path(p).suffix == ".png"])
        page = render_side_by_side_html([(n, r) for n, _f, r in runs], pictures, title=title, intro=intro)
        written.append(write_text_atomic(out / "report.html", page))
    return written
