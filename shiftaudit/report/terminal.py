"""Rich tables for the terminal. Pure rendering: takes results, returns rich renderables.

Columns are declared and rich lays them out: numbers are right-aligned, never wrapped and never narrower than their
widest cell (a wrapped "90.0 %" reads as two values); names fold, down to a minimum width. Where rich cannot fit a
table in the console that way, the table is stacked instead: each row's name, then one ``header  value`` line per
number (:func:`_stacked`); a comparison of three or more runs first becomes one table per later run.
"""

from __future__ import annotations

import io
import math
import sys
from collections.abc import Sequence
from typing import Any

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group
from rich.measure import Measurement
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

from shiftaudit.antialias.inspection import Inspection
from shiftaudit.data.presets import Preprocessing
from shiftaudit.errors import UsageError, one_line
from shiftaudit.report.rows import (
    LAYER_CAPTION,
    SIGNIFICANCE_RULE,
    CompareRow,
    audit_rows,
    compare_rows,
    layer_rows,
    left_out_caption,
)
from shiftaudit.result import AuditResult
from shiftaudit.shifts.sets import shift_mode as registered


def text(value: object, style: str = "", **kwargs: Any) -> Text:
    """A string for the terminal as rich Text: literal (never markup), control characters shown as escapes
    (:func:`~shiftaudit.errors.one_line`). Every user string a table or message shows (paths, folder, class and layer
    names, notes, run names) goes through here or ``one_line``, before any column is measured."""
    return Text(one_line(str(value)), style=style, **kwargs)


def sig(v: float | None, digits: int = 3) -> str:
    """A non-negative rate or duration to ``digits`` significant digits, never rounded to zero and never in exponent
    form: 0.00412, 0.35, 3.14, 412, 12,345. '-' when unknown."""
    if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        return "-"
    if v == 0:
        return "0"
    rounded = float(f"{v:.{digits - 1}e}")  # the magnitude after rounding: 9.996 reads 10.0 (three digits), not 10.00
    decimals = max(0, digits - 1 - math.floor(math.log10(rounded)))
    return f"{v:,.{decimals}f}"


METRIC_MIN_WIDTH = 16  # a metric name folds to this width, never narrower
LAYER_NAME_MIN_WIDTH = 12  # a layer name, likewise
NAME_MIN_WIDTH = 8  # the inspect table's layer names, types and patch actions
LAYER_SHORT = ("Layer", "Size", "Stride", "Equiv.", "Equiv./(ref/2)", "Invar.", "Modulo")  # LAYER_HEADER, for 80 columns


def _table(title: str, caption: str | None = None) -> Table:
    """A table in the house style, its title and caption shown literally (:func:`text`)."""
    return Table(
        title=text(title),
        title_justify="left",
        caption=None if caption is None else text(caption),
        caption_justify="left",
        show_edge=False,
        pad_edge=False,
    )


def _add_names(t: Table, header: str, cells: Sequence[str], min_width: int) -> None:
    """A column of names: they fold, but never narrower than ``min_width`` (or their widest, if less)."""
    t.add_column(header, overflow="fold", min_width=min(min_width, max(map(cell_len, cells), default=1)))


def _add_whole(t: Table, header: str | Text, cells: Sequence[str], **kwargs: Any) -> None:
    """A column of cells read whole (numbers: a wrapped "90.0 %" reads as two values; sizes, roles): right-aligned,
    never wrapped nor narrower than its widest cell (where they do not fit, rich draws the table wider than the
    console rather than cut one: :func:`_fits`)."""
    kwargs = {"justify": "right", "no_wrap": True, **kwargs}
    t.add_column(header, min_width=max(map(cell_len, cells), default=1), **kwargs)


class _Cell(Text):
    """A table cell, measured as folding anywhere: its column's declared ``min_width`` is its floor."""

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(1, super().__rich_measure__(console, options).maximum)


def _fits(table: Table, width: int) -> bool:
    """Whether rich lays ``table`` out within ``width`` columns, no column below its floor. It may not in two ways:
    the narrowest table (every column at its floor) is wider; or rich, narrowing the widest columns evenly, takes one
    below its floor and draws the table wider than ``width`` (rich gives no floor to a column it narrows to nothing)."""
    console = Console(width=width, file=io.StringIO(), color_system=None)
    narrowest = table.__rich_measure__(console, console.options.update_width(sys.maxsize)).minimum
    lines = Segment.split_lines(console.render(table, console.options))
    return narrowest <= width and all(Segment.get_line_length(line) <= width for line in lines)


def _stacked(table: Table) -> Group:
    """``table`` as one block per row: the row's name, then a ``header  value`` line for each other cell that has
    one. Only names fold, so no number is cut however narrow the console."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(overflow="fold")
    grid.add_column(justify="right", no_wrap=True)
    headers = [Text("  ") + str(column.header) for column in table.columns[1:]]
    for name, *cells in zip(*(column.cells for column in table.columns)):
        grid.add_row(name)
        for header, cell in zip(headers, cells):
            if str(cell):
                grid.add_row(header, cell)
    return Group(*(part for part in (table.title, grid, table.caption) if part is not None))


def _fitted(table: Table, width: int | None) -> Table | Group:
    """``table``, or :func:`_stacked` where it does not fit the console's ``width``."""
    return table if width is None or _fits(table, width) else _stacked(table)


def audit_table(result: AuditResult, title: str | None = None, width: int | None = None) -> Table | Group:
    """Metric names fold; numbers never do. ``width``: the console width, where the numbers do not fit beside names
    folded to 16 columns, each metric's name goes above its value and interval (:func:`_stacked`)."""
    rows = [[one_line(c) for c in row] for row in audit_rows(result)]  # escaped before the columns are measured
    t = _table(title or "Shift audit", left_out_caption(result))
    _add_names(t, "Metric", [r[0] for r in rows], METRIC_MIN_WIDTH)
    _add_whole(t, "Value", [r[1] for r in rows])
    _add_whole(t, "95% CI", [r[2] for r in rows], style="dim")
    for row in rows:
        t.add_row(*map(_Cell, row))
    return _fitted(t, width)


def comparison_table(
    results: list[tuple[str, AuditResult]], title: str = "Before / after", width: int | None = None
) -> Table | Group:
    """Side-by-side rows for several results (same data), with each run's change from the first.

    A change is marked ``*`` when it is beyond the confidence intervals (see :data:`SIGNIFICANCE_RULE`). ``width``:
    the console width; metric and run names fold, the numbers never do. Where three or more runs do not fit side by
    side, each later run gets its own table beside the first; two runs that do not fit are stacked.
    """
    table = _comparison(compare_rows(results), [one_line(name) for name, _ in results], title)
    if width is None or _fits(table, width):
        return table
    if len(results) > 2:
        parts = [
            comparison_table([results[0], results[i]], f"{title} ({i} of {len(results) - 1})", width)
            for i in range(1, len(results))
        ]
        return Group(*parts)
    return _stacked(table)


def _comparison(rows: list[CompareRow], names: list[str], title: str) -> Table:
    """The side-by-side table of the runs ``names`` (escaped); a run's name folds above its numbers, never narrower
    than they are."""
    others = range(1, len(names))
    t = _table(title, f"Change from {names[0]}; {SIGNIFICANCE_RULE}" if others else None)
    metrics = [one_line(row.metric) for row in rows]
    _add_names(t, "Metric", metrics, METRIC_MIN_WIDTH)
    columns = [[row.cell(i) for row in rows] for i in range(len(names))]
    columns += [[row.delta_text(i) for row in rows] for i in others]
    headers = names + ["Change" if len(names) == 2 else f"\u0394 {names[i]}" for i in others]
    for header, cells in zip(headers, columns):
        _add_whole(t, _Cell(header), cells, no_wrap=False, overflow="fold")
    for row_cells in zip(metrics, *columns):
        t.add_row(*map(_Cell, row_cells))
    return t


def inspection_table(
    insp: Inspection, extra_columns: dict[str, dict[str, Any]] | None = None, width: int | None = None
) -> Table | Group:
    """One row per downsampling point: k kernel, s stride, size in -> out (one number for a square map).

    ``width``: the console width. Sizes, strides and roles never wrap; the layer name, its type and the patch action
    fold, the widest first, down to 8 columns; narrower still, each point is stacked (:func:`_stacked`).
    """
    extra_columns = extra_columns or {}
    points = [p for p in insp.points if p.role != "squeeze"]
    notes = ["k kernel, s stride, size in->out"]
    if len(points) < len(insp.points):
        notes.append(f"+ {len(insp.points) - len(points)} squeeze-excitation pools inside blocks (gating, not downsampling)")
    size = f"{insp.input_size[0]}x{insp.input_size[1]}"
    t = _table(f"Downsampling points at {size} (total stride {insp.total_stride})", "; ".join(notes))
    rows = [
        [
            one_line(c)  # layer and module names are the model's: escaped before the columns are measured
            for c in (
                p.name,
                p.module if p.kind != "blurpool" or "blur" in p.module.lower() else f"{p.module} (blurpool)",
                _side(p.kernel) if p.kernel else "-",
                _side(p.stride) if p.stride else "-",
                f"{_side(p.in_size)}->{_side(p.out_size)}",
                p.role,
                *[str(extra_columns[c].get(p.name, "")) for c in extra_columns],
            )
        ]
        for p in points
    ]
    for j, header in enumerate(["Layer", "Type", "k", "s", "Size", "Role", *extra_columns]):
        cells = [r[j] for r in rows]
        if header in ("k", "s", "Size", "Role"):
            _add_whole(t, header, cells, justify="left" if header == "Role" else "right")
        else:
            _add_names(t, header, cells, NAME_MIN_WIDTH)
    for r in rows:
        t.add_row(*map(_Cell, r))
    return _fitted(t, width)


def describe_preprocessing(entry: Any) -> str:
    """A report's ``data.preprocessing`` in words ("resize 297, centre crop 260x260, ImageNet mean/std"); "" when the
    report has none (tensors taken as the model's input) or an entry that does not read as one."""
    if not isinstance(entry, dict):
        return ""
    try:
        return Preprocessing.from_json(entry).describe()
    except UsageError:
        return ""


PADDING = {
    "circular": "circular (wrap-around)",
    "crop": "none: crops of a larger canvas, new content enters at the border",
    "subpixel": "periodic (Fourier phase shift)",
}  # for reports written before shift modes


def describe_shifts(result: AuditResult) -> str:
    """The shift set in words, naming the shift mode and what fills the border (e.g. "all 1024 circular shifts (wrap-around)")."""
    s = result.settings.get("shifts", {})
    shift_mode = s.get("mode") or result.settings.get("shift_mode") or "circular"
    noun = _mode_noun(shift_mode)
    shifts = f"{s.get('count', '?')} {noun}"
    if s.get("kind") == "all":
        shifts = f"all {s.get('count')} {noun}"
    elif s.get("max_shift") is not None:
        shifts += f" within +/-{s['max_shift']} px" + (f", step {s['step']:g}" if s.get("step", 1) != 1 else "")
    padding = "wrap-around" if shift_mode == "circular" else (s.get("padding") or PADDING.get(shift_mode, "?"))
    return f"{shifts} ({padding})"  # no [..]: rich markup


def _mode_noun(shift_mode: str) -> str:
    """ "circular shifts", "crop shifts", ...: the registered mode's noun (a report may come from a plug-in mode)."""
    try:
        return registered(shift_mode).noun
    except UsageError:
        return f"{shift_mode} shifts"


def describe_run(result: AuditResult) -> str:
    model = result.model.get("arch") or result.model.get("description") or "model"
    src = result.model.get("source")
    data = result.data.get("description", "")
    prep = describe_preprocessing(result.data.get("preprocessing"))
    if prep:
        data = f"{data} ({prep})"
    mode = result.settings.get("mode", "")
    dev = result.environment.get("device_name") or result.environment.get("device", "")
    name = f"{model} ({src})" if src else str(model)
    return f"{name} on {data}; {describe_shifts(result)}, {mode}; {dev}"


def _side(hw: Any) -> str:
    """ "224" for a square 224x224, "224x200" otherwise."""
    h, w = hw
    return f"{h}" if h == w else f"{h}x{w}"


def layers_table(layers: dict[str, Any], width: int | None = None) -> Table | Group:
    """One row per measured layer; layer names fold (to 12 columns, no narrower), the numbers never do.

    ``width``: the console width. Where the columns cannot fit it with every number whole, each layer becomes one
    block of ``label value`` lines instead (:func:`_stacked`).
    """
    rows = [(one_line(r[0]), *r[1:]) for r in layer_rows(layers)]  # the model's names, escaped before measuring
    t = _table("Per-layer distance from shift-equivariance", LAYER_CAPTION)
    _add_names(t, "Layer", [r[0] for r in rows], LAYER_NAME_MIN_WIDTH)
    for j, header in enumerate(LAYER_SHORT[1:], start=1):
        _add_whole(t, header, [r[j] for r in rows])
    for row in rows:
        t.add_row(*map(_Cell, row))
    return _fitted(t, width)
