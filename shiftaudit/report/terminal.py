"""Rich tables for the terminal. Pure rendering: takes results, returns rich renderables."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from shiftaudit.antialias.inspection import Inspection
from shiftaudit.errors import one_line
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


METRIC_MIN_WIDTH = 16  # the metric names wrap to this, never narrower


def audit_table(result: AuditResult, title: str | None = None, width: int | None = None) -> Table | Group:
    """Metric names wrap; numbers never do (at 80 columns a wrapped "90.0 %" reads as two values).

    ``width``: the console width. Where the value and interval columns cannot fit beside names folded to 16 columns,
    each metric's name goes on its own line with its value and interval below it (below about 35 columns, on a line
    each), so that no number is cut.
    """
    rows = [(one_line(metric), value, ci) for metric, value, ci in audit_rows(result)]
    heading = text(title or "Shift audit")
    caption = left_out_caption(result)
    values = max([len(r[1]) for r in rows] + [len("Value")])
    cis = max([len(r[2]) for r in rows] + [len("95% CI")])
    if width is not None and METRIC_MIN_WIDTH + values + cis + 6 > width:
        lines = [heading]
        for metric, value, ci in rows:
            lines.append(text(metric, overflow="fold"))
            numbers = f"  {value:>{values}}  {ci:>{cis}}".rstrip()
            if len(numbers) <= width:
                lines.append(Text(numbers))
            else:  # narrower still: the value, then its interval, each whole on its own line
                lines += [Text(f"  {part}") for part in (value, ci) if part]
        if caption:
            lines.append(Text(caption, style="dim"))
        return Group(*lines)
    t = Table(title=heading, title_justify="left", show_edge=False, pad_edge=False)
    if caption:
        t.caption, t.caption_justify = Text(caption), "left"
    t.add_column("Metric", overflow="fold", min_width=METRIC_MIN_WIDTH)
    t.add_column("Value", justify="right", no_wrap=True)
    t.add_column("95% CI", justify="right", style="dim", no_wrap=True)
    for row in rows:
        t.add_row(*(text(c) for c in row))
    return t


def describe_preprocessing(entry: Any) -> str:
    """A report's ``data.preprocessing`` in words ("resize 297, centre crop 260x260, ImageNet mean/std"); "" when the
    report has none (tensors taken as the model's input) or an entry that does not read as one."""
    from shiftaudit.data.presets import Preprocessing
    from shiftaudit.errors import UsageError

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
    from shiftaudit.errors import UsageError
    from shiftaudit.shifts.sets import shift_mode as registered

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


def comparison_table(
    results: list[tuple[str, AuditResult]], title: str = "Before / after", width: int | None = None
) -> Table | Group:
    """Side-by-side rows for several results (same data), with each run's change from the first.

    A change is marked ``*`` when it is beyond the confidence intervals (see :data:`SIGNIFICANCE_RULE`). ``width``:
    the console width to fit; metric names and run names wrap, the numbers never do. When the numbers of three or
    more runs cannot fit side by side, each later run gets its own table beside the first run, so that no column
    and no part of the caption is cut off.
    """
    rows = compare_rows(results)
    if width and len(results) > 2 and _compare_min_width(rows, len(results)) > width:
        return Group(
            *(comparison_table([results[0], results[i]], f"{title} ({i} of {len(results) - 1})", width)
              for i in range(1, len(results)))
        )
    return _comparison(rows, results, title, width)


def _compare_min_width(rows: list[CompareRow], runs: int) -> int:
    """The narrowest the side-by-side table can be: metric names at their floor, every number whole."""
    numbers = [[row.cell(i) for i in range(runs)] + [row.delta_text(i) for i in range(1, runs)] for row in rows]
    widest = [max([len(r[j]) for r in numbers] + [6]) for j in range(2 * runs - 1)]
    return METRIC_MIN_WIDTH + sum(widest) + 3 * len(widest)


def _comparison(rows: list[CompareRow], results: list[tuple[str, AuditResult]], title: str, width: int | None) -> Table:
    others = list(range(1, len(results)))
    shown = [one_line(name) for name, _ in results]  # run names come from report paths: shown escaped, measured so
    headers = shown + ["Change" if len(results) == 2 else f"\u0394 {shown[i]}" for i in others]
    cells = [[one_line(row.metric), *[row.cell(i) for i in range(len(results))], *[row.delta_text(i) for i in others]]
             for row in rows]
    t = Table(title=text(title), title_justify="left", show_edge=False, pad_edge=False)
    t.add_column("Metric", overflow="fold", min_width=METRIC_MIN_WIDTH)
    k = len(headers)
    names = min(36, max(len(c[0]) for c in cells)) if cells else 16
    for j, header in enumerate(headers, start=1):
        widest = max([len(c[j]) for c in cells] + [6])  # the numbers: never narrower
        cap = None
        if width:  # a run name gets its share of the width: beside whole metric names, else beside names at 16
            share, tight = (width - names - 3 * k) // k, (width - METRIC_MIN_WIDTH - 3 * k) // k
            word = max(len(w) for w in header.split())  # wrap between words where that fits
            cap = max(widest, min(len(header), max(share, min(word, 12, tight))))
        t.add_column(Text(header), justify="right", overflow="fold", min_width=widest, max_width=cap)
    for row_cells in cells:
        t.add_row(*(Text(c) for c in row_cells))
    if others:
        t.caption = Text(f"Change from {shown[0]}; " + SIGNIFICANCE_RULE)
    return t


def inspection_table(insp: Inspection, extra_columns: dict[str, dict[str, Any]] | None = None, width: int | None = None) -> Table:
    """One row per downsampling point: k kernel, s stride, size in -> out (one number for a square map).

    ``width``: the console width to fit. Short values (sizes, roles, numbers) are never wrapped; the layer name, its
    type and the patch action wrap, the widest first, so that at 80 columns no column collapses to nothing.
    """
    t = Table(
        title=f"Downsampling points at {insp.input_size[0]}x{insp.input_size[1]} (total stride {insp.total_stride})",
        title_justify="left",
        show_edge=False,
        pad_edge=False,
    )
    extra_columns = extra_columns or {}
    rows = []
    squeeze = 0
    for p in insp.points:
        if p.role == "squeeze":
            squeeze += 1
            continue
        k = _side(p.kernel) if p.kernel else "-"
        s = _side(p.stride) if p.stride else "-"
        module = p.module if p.kind != "blurpool" or "blur" in p.module.lower() else f"{p.module} (blurpool)"
        rows.append(
            [
                one_line(c)  # layer and module names are the model's: escaped before the columns are measured
                for c in (
                    p.name,
                    module,
                    k,
                    s,
                    f"{_side(p.in_size)}->{_side(p.out_size)}",
                    p.role,
                    *[str(extra_columns[c].get(p.name, "")) for c in extra_columns],
                )
            ]
        )
    header = ["Layer", "Type", "k", "s", "Size", "Role", *extra_columns]
    widths = [max([len(r[j]) for r in rows] + [len(col)]) for j, col in enumerate(header)]
    if width is not None:  # wrap names at comfortable floors first, then, on a narrow console, at hard ones
        for floor in ({"Layer": 14, "Type": 9, "Patch": 8}, {"Layer": 8, "Type": 6, "Patch": 6}):
            floors = [floor.get(col, w) for col, w in zip(header, widths)]
            widths = _fit(widths, floors, width - 3 * (len(header) - 1))
    for col, w in zip(header, widths):
        t.add_column(col, justify="right" if col in ("k", "s", "Size") else "left", width=w, overflow="fold")
    for r in rows:
        t.add_row(*(Text(c) for c in r))
    notes = ["k kernel, s stride, size in->out"]
    if squeeze:
        notes.append(f"+ {squeeze} squeeze-excitation pools inside blocks (gating, not downsampling)")
    t.caption, t.caption_justify = "; ".join(notes), "left"
    return t


def _fit(widths: list[int], floors: list[int], budget: int) -> list[int]:
    """Narrow the columns that may wrap, always the one furthest above its floor (the rightmost on a tie: patch
    actions wrap at spaces, names would break mid-word), until they fit ``budget``."""
    widths = list(widths)
    while sum(widths) > budget:
        room = [w - f for w, f in zip(widths, floors)]
        j = max(reversed(range(len(widths))), key=lambda i: room[i])
        if room[j] <= 0:
            break  # nothing left to narrow: rich folds the rest
        widths[j] -= 1
    return widths


def _side(hw: Any) -> str:
    """ "224" for a square 224x224, "224x200" otherwise."""
    h, w = hw
    return f"{h}" if h == w else f"{h}x{w}"


LAYER_NAME_MIN_WIDTH = 12  # a layer name folds to this width, never narrower
LAYER_SHORT = ("Layer", "Size", "Stride", "Equiv.", "Equiv./(ref/2)", "Invar.", "Modulo")  # fits 80 columns


def layers_table(layers: dict[str, Any], width: int | None = None) -> Table | Group:
    """One row per measured layer; layer names fold, the numbers never do.

    ``width``: the console width. Where the columns cannot fit it with every number whole, each layer becomes one
    block of ``label value`` lines instead, so that no number is cut.
    """
    rows = [(one_line(r[0]), *r[1:]) for r in layer_rows(layers)]
    widest = [max([len(r[j]) for r in rows] + [len(col)]) for j, col in enumerate(LAYER_SHORT)]
    name_width = min(LAYER_NAME_MIN_WIDTH, widest[0])
    if width is not None and name_width + sum(widest[1:]) + 3 * (len(widest) - 1) > width:
        grid = Table.grid(padding=(0, 1))
        grid.add_column(overflow="fold")
        grid.add_column(justify="right", no_wrap=True)
        for r in rows:
            grid.add_row(Text(r[0]), "")
            for col, value in zip(LAYER_SHORT[1:], r[1:]):
                grid.add_row(Text(f"  {col}"), Text(value))
        return Group(Text("Per-layer distance from shift-equivariance"), grid, Text(LAYER_CAPTION))
    t = Table(title="Per-layer distance from shift-equivariance", title_justify="left", show_edge=False, pad_edge=False)
    for col in LAYER_SHORT:
        if col == "Layer":  # names fold, but never to nothing: the numbers are unreadable without them
            t.add_column(col, overflow="fold", min_width=name_width)
        else:
            t.add_column(col, justify="right", no_wrap=True)
    for row in rows:
        t.add_row(*(Text(c) for c in row))
    t.caption = LAYER_CAPTION
    t.caption_justify = "left"
    return t
