"""The terminal view of a sequential gate run: each threshold's estimate, its confidence sequence and the verdict.

A sequential run measures only what its thresholds need, so it has no metric table; this one is built from the
report's ``metrics.sequential`` section alone, so what is printed is what the JSON says.
"""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from shiftaudit.report.rows import num
from shiftaudit.report.terminal import sig
from shiftaudit.result import AuditResult

LABELS = {
    "consistency": "Consistency",
    "accuracy": "Accuracy, no shift",
    "variation": "Variation of P(correct)",
}


def is_sequential(result: AuditResult) -> bool:
    return "sequential" in result.metrics


def statistic_label(entry: dict) -> str:
    if entry["metric"] == "adversarial":
        return f"Adversarial accuracy, r = {entry['radius']:g} px"
    return LABELS.get(entry["metric"], entry["metric"])


def sequential_rows(result: AuditResult) -> list[tuple[str, str, str, str, str]]:
    """(statistic, estimate, interval, confidence, decision) per threshold, as printed."""
    rows = []
    for e in result.metrics["sequential"]["statistics"]:
        rows.append(
            (
                statistic_label(e),
                num(e["estimate"]),
                f"[{num(e['ci_low'])}, {num(e['ci_high'])}]",
                f"{100 * e['confidence']:.4g} %",
                e["decision"],
            )
        )
    return rows


def sequential_table(result: AuditResult) -> Table:
    seq = result.metrics["sequential"]
    title = (
        f"Sequential gate: {seq['draws']:,} draws from {result.data['num_images']:,} images, "
        f"{seq['forward_rows']:,} of {seq['forward_rows_exhaustive']:,} forward passes"
    )
    t = Table(title=Text(title), title_justify="left", show_edge=False, pad_edge=False)
    t.add_column("Threshold on", overflow="fold", min_width=16)
    t.add_column("Estimate", justify="right", no_wrap=True)
    t.add_column("Confidence sequence", justify="right", style="dim", no_wrap=True)
    t.add_column("Level", justify="right", style="dim", no_wrap=True)
    t.add_column("Decision", no_wrap=True)
    for row in sequential_rows(result):
        t.add_row(*(Text(c) for c in row))
    return t


def sequential_summary(result: AuditResult) -> str:
    """The dim line under the table: the work saved."""
    seq, t = result.metrics["sequential"], result.timing
    share = seq["forward_rows"] / seq["forward_rows_exhaustive"] if seq["forward_rows_exhaustive"] else 0.0
    return (
        f"decided in {sig(t.get('seconds'))} s with {100 * share:.1f} % of the full audit's forward passes; "
        "--exact runs the full audit"
    )
