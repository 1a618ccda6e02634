"""The report folder (``--out DIR``): the JSON report, and the pictures and HTML page when they are available."""

from __future__ import annotations

from pathlib import Path

from ..atomicio import ensure_writable_dir
from ..result import AuditResult


def write_report_dir(result: AuditResult, out_dir: str | Path) -> list[Path]:
    """Write everything a report folder holds; returns the files written (each one atomically)."""
    out = ensure_writable_dir(out_dir)
    written = [result.save_json(out / "report.json")]
    if "layers" in result.metrics:
        from .heatmaps import plot_layer_heatmaps

        written.append(plot_layer_heatmaps(result.metrics["layers"], out / "layers.png"))
    return written
