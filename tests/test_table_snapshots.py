"""The audit, compare, inspect and per-layer tables exactly as a person reads them, at 80 and 120 columns and on a
narrow console (50): titles, column headers, captions, where rich folds the names, and the stacked layout a table
takes where its columns do not fit (the compare table of three runs first splits into one table per later run).
The row tests in test_rendering.py parse numbers back; here, at every width from 40 to 120 in steps of 5, no line is
wider than the console (a cropped line once cut "do not" out of the caption) and every number is whole.
The unit tests at the end pin, with values worked out by hand, what the snapshots leave open (the mutation run
showed it): changes of non-percentage rows, a metric one run lacks, intervals that only touch, a non-square
inspection title, a blur layer whose class name does not say "blur".
A snapshot that changes on purpose is rewritten with ``SHIFTAUDIT_UPDATE_SNAPSHOTS=1`` and reviewed in the diff.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console, Group
from rich.table import Table
from torch import nn

from shiftaudit.antialias.inspection import Inspection, inspect_model
from shiftaudit.metrics.base import Reading
from shiftaudit.metrics.entries import PairSummary, Proportion, Summary
from shiftaudit.report.rows import CompareRow, audit_rows, compare_rows, layer_rows, value_text
from shiftaudit.report.terminal import (
    audit_table,
    comparison_table,
    describe_run,
    describe_shifts,
    inspection_table,
    layers_table,
    sig,
)
from tests.helpers import synthetic_result

SNAPSHOTS = Path(__file__).parent / "snapshots"


def _render(renderable: Any, width: int) -> str:
    console = Console(width=width, record=True, force_terminal=False, color_system=None)
    console.print(renderable)
    return "\n".join(line.rstrip() for line in console.export_text().splitlines()) + "\n"


def _check(name: str, text: str) -> None:
    width = int(name.rsplit("_", 1)[1])
    assert max(len(line) for line in text.splitlines()) <= width, "a line is cropped by the console"
    path = SNAPSHOTS / f"{name}.txt"
    if os.environ.get("SHIFTAUDIT_UPDATE_SNAPSHOTS") == "1":
        SNAPSHOTS.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.read_text(encoding="utf-8") == text


WIDTHS = [50, 80, 120]  # a narrow console, and the two widths terminals have
TWO_RUNS = [("Baseline", synthetic_result(0.0)), ("Patched (tri3)", synthetic_result(0.1))]
THREE_RUNS = [
    ("Baseline", synthetic_result(0.0)),
    ("Baseline recalibrated on 256 images", synthetic_result(0.02)),
    ("Patched binomial5 distilled", synthetic_result(0.05)),
]


@pytest.mark.parametrize("width", WIDTHS)
def test_audit_table(width):
    # the default title, the three headers, numbers right-aligned and whole; names fold to 16 columns, and where the
    # numbers do not fit beside them (at 50) each name goes above its value and interval
    _check(f"audit_{width}", _render(audit_table(synthetic_result(), width=width), width))


@pytest.mark.parametrize("width", WIDTHS)
def test_comparison_of_two_runs(width):
    _check(f"compare2_{width}", _render(comparison_table(TWO_RUNS, width=width), width))


@pytest.mark.parametrize("width", WIDTHS)
def test_comparison_of_three_runs_with_long_names(width):
    _check(f"compare3_{width}", _render(comparison_table(THREE_RUNS, title="Three runs", width=width), width))


@functools.cache
def _resnet18() -> Inspection:
    import torchvision

    return inspect_model(torchvision.models.resnet18(num_classes=10).eval(), (64, 64))


def _resnet18_inspection(width: int | None) -> Table | Group:
    actions = {"maxpool": "MaxBlurPool(tri3)", "layer2.0.conv1": "conv + BlurPool"}
    return inspection_table(_resnet18(), {"Patch": actions}, width)


@pytest.mark.parametrize("width", WIDTHS)
def test_inspection_of_resnet18(width):
    _check(f"inspect_resnet18_{width}", _render(_resnet18_inspection(width), width))


LAYERS = {
    "layers": [
        {
            "name": "features.0",
            "resolution": [32, 32],
            "stride": 1,
            "equivariance": {"mean": 0.0},
            "invariance": {"mean": 0.3125},
            "reference_distance": 0.5,
            "exact_modulo": 1,
        },
        {
            "name": "features.some_long_block_name.3",
            "resolution": [16, 8],
            "stride": 2,
            "equivariance": {"mean": 0.04321},
            "invariance": {"mean": 0.25},
            "reference_distance": 0.4,
            "exact_modulo": 2,
        },
        {
            "name": "fc",
            "resolution": [1, 1],
            "stride": 32,
            "equivariance": {"mean": 0.125},
            "invariance": {"mean": 0.125},
            "reference_distance": None,
            "exact_modulo": None,
        },
    ]
}


@pytest.mark.parametrize("width", WIDTHS)
def test_layers_table(width):
    _check(f"layers_{width}", _render(layers_table(LAYERS, width), width))


def test_every_number_is_whole_every_name_shown_and_no_line_too_wide_at_every_width():
    """Rich lays the tables out; where it cannot keep every number whole and every name at its minimum width, the table
    is stacked (or, for three runs, split first). Whichever layout a width gets, each number a table holds is printed
    whole, each name is there (folded, perhaps), and no line is cut."""
    result = synthetic_result()
    cases = [
        (lambda w: audit_table(result, width=w), audit_rows(result)),
        (lambda w: layers_table(LAYERS, w), layer_rows(LAYERS)),
        (
            lambda w: comparison_table(THREE_RUNS, width=w),
            [(row.metric, *(c for i in range(3) for c in (row.cell(i), row.delta_text(i)))) for row in compare_rows(THREE_RUNS)],
        ),
        (_resnet18_inspection, [(p.name, f"{p.in_size[0]}->{p.out_size[0]}", p.role) for p in _resnet18().points]),
    ]
    for width in range(40, 121, 5):
        for table, rows in cases:
            text = _render(table(width), width)
            assert max(len(line) for line in text.splitlines()) <= width, (width, text)
            names = "".join(_first_column(text).split())
            for name, *numbers in rows:
                assert "".join(name.split()) in names, (width, name, text)
                for number in numbers:
                    assert number in text, (width, number, text)


def test_a_table_is_stacked_exactly_where_rich_stops_fitting_it():
    # the layers table: Layer folded to 12, the numbers whole (5 + 6 + 6 + 14 + 6 + 6), 6 separators of 3
    assert isinstance(layers_table(LAYERS, 73), Table) and isinstance(layers_table(LAYERS), Table)
    assert isinstance(layers_table(LAYERS, 72), Group)


def _first_column(text: str) -> str:
    """The text of the first column, its folded pieces joined (a table row's cells are separated by "│")."""
    return "".join(line.split("│")[0].strip() for line in text.splitlines())


def test_a_metric_name_longer_than_its_column_folds_whole_at_every_width():
    # a caller's own metric, named by one 36-letter word: wider than the 16-column names and than a 30-column console
    result = synthetic_result()
    result.metrics["shiftrobustnessofthetop1probability"] = {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": 40}
    for width in (30, 53, 80):  # 30: each name above its numbers; 53 and 80: the table
        text = _render(audit_table(result, width=width), width)
        assert max(len(line) for line in text.splitlines()) <= width
        assert "shiftrobustnessofthetop1probability" in _first_column(text), width
        for _, value, ci in audit_rows(result):  # and no number is cut, however narrow
            assert value in text and ci in text, (width, value, ci)


def test_intervals_are_dim_and_values_are_not_in_a_colour_terminal():
    console = Console(width=80, record=True, force_terminal=True, color_system="standard")
    rows = audit_rows(synthetic_result())
    console.print(audit_table(synthetic_result(), width=80))
    ansi = console.export_text(styles=True)
    for _, value, ci in rows:
        assert re.search(r"\x1b\[2m *" + re.escape(ci), ansi), ci
        assert not re.search(r"\x1b\[2m *" + re.escape(value), ansi), value


# Units of the compare rows and the layout decisions


def _row(metric: str, percent: bool, values, lows, highs) -> CompareRow:
    return CompareRow(metric, percent, list(values), list(lows), list(highs), 1 if percent else 4)


def test_a_change_of_a_plain_number_is_shown_to_four_decimals_without_points():
    row = _row("Variation of P(correct), mean", False, [0.0447, 0.0322], [0.04, 0.03], [0.05, 0.045])
    assert row.delta(1) == 0.0322 - 0.0447  # not scaled: only percentages become points
    assert row.cell(1) == "0.0322" and row.delta_text(1) == "-0.0125"


def test_a_change_of_a_percentage_is_in_points():
    row = _row("Accuracy, no shift", True, [0.9, 0.85], [0.86, 0.80], [0.93, 0.89])
    assert row.delta(1) == (0.85 - 0.9) * 100.0 and row.delta_text(1) == "-5.00 pt"


def test_a_metric_one_run_lacks_has_no_cell_and_no_change():
    first, second = synthetic_result(0.0), synthetic_result(0.1)
    del second.metrics["accuracy_map"]
    rows = {r.metric: r for r in compare_rows([("a", first), ("b", second)])}
    worst = rows["Accuracy over shifts, worst"]
    assert worst.values[1] is None and worst.ci_low[1] is None and worst.ci_high[1] is None
    assert worst.cell(1) == "-" and worst.delta(1) is None and worst.delta_text(1) == ""
    only_second = _row("x", True, [None, 0.5], [None, 0.4], [None, 0.6])  # measured in the later run only
    assert only_second.delta(1) is None and only_second.delta_text(1) == ""


def test_intervals_that_only_touch_overlap():
    touching_below = _row("x", True, [0.9, 0.7], [0.8, 0.6], [0.95, 0.8])  # the later run's top is the first's bottom
    touching_above = _row("x", True, [0.7, 0.9], [0.6, 0.8], [0.8, 0.95])
    apart = _row("x", True, [0.9, 0.7], [0.8, 0.6], [0.95, 0.79])
    assert touching_below.significant(1) is False and touching_above.significant(1) is False
    assert apart.significant(1) is True and apart.delta_text(1) == "-20.00 pt *"
    assert _row("x", True, [0.9, 0.7], [None, 0.6], [0.95, 0.79]).significant(1) is None


def test_three_runs_split_into_one_table_per_later_run_where_they_do_not_fit_side_by_side():
    assert isinstance(comparison_table(THREE_RUNS, width=120), Table)
    split = comparison_table(THREE_RUNS, width=80)
    assert isinstance(split, Group) and len(split.renderables) == 2
    assert [str(t.title) for t in split.renderables] == ["Before / after (1 of 2)", "Before / after (2 of 2)"]
    assert isinstance(comparison_table(THREE_RUNS), Table)  # no width: one table


def test_two_runs_never_split_but_are_stacked_where_they_do_not_fit():
    stacked = comparison_table([("a", synthetic_result(0.0)), ("b", synthetic_result(0.1))], width=30)
    assert isinstance(stacked, Group) and str(stacked.renderables[0]) == "Before / after"


class Downsample(nn.Module):
    """A blur-and-subsample layer whose class name does not say "blur" (as some checkpoints name theirs)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("filt", torch.full((channels, 1, 3, 3), 1 / 9))
        self.channels, self.stride = channels, 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.filt, stride=2, groups=self.channels)


def test_inspection_names_a_blur_layer_and_a_non_square_input():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), Downsample(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    ).eval()
    table = inspection_table(inspect_model(model, (32, 24)), width=100)
    assert str(table.title) == "Downsampling points at 32x24 (total stride 2)"
    types = list(table.columns[1].cells)
    assert str(types[0]) == "Downsample (blurpool)"  # the kind is said when the name does not say it
    assert str(list(table.columns[4].cells)[0]) == "32x24->16x12"  # a non-square map says both sides
    from shiftaudit.antialias.blurpool import BlurPool2d

    named = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), BlurPool2d(4, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    ).eval()
    types = [str(c) for c in inspection_table(inspect_model(named, (32, 32)), width=100).columns[1].cells]
    assert types[0] == "BlurPool2d"  # and not said twice when it does


def test_flip_rate_and_mean_abs_change_rows_read_as_the_json_says():
    result = synthetic_result()
    result.metrics["flip_rate"] = PairSummary(0.015678, None, 0.00612, 0.025512, 40, pairs_per_image=24)
    result.metrics["mac"] = Summary(0.0334449, None, 0.02921, 0.03755, 40)
    rows = {metric: (value, ci) for metric, value, ci in audit_rows(result)}
    assert rows["Flip rate between 1-px neighbouring shifts"] == ("1.57 %", "[0.61, 2.55]")  # a share: % to 2 decimals
    assert rows["Mean abs. change of top-1 probability"] == ("0.0334", "[0.0292, 0.0376]")  # a probability: 4 decimals


def test_significant_digits():
    assert [sig(v) for v in (0.00412345, 0.35, 3.14159, 412.3, 12345.6)] == ["0.00412", "0.350", "3.14", "412", "12,346"]
    assert sig(0.00412345, 2) == "0.0041" and sig(1.0) == "1.00" and sig(9.996) == "10.0" and sig(0.09996) == "0.100"
    assert sig(9.96) == "9.96" and sig(0.0996) == "0.0996"  # rounding to 3 digits does not reach the next power of 10
    assert [sig(v) for v in (0.0, None, -1.0, float("nan"), float("inf"))] == ["0", "-", "-", "-", "-"]


def test_descriptions_of_reports_that_lack_fields():
    # a report written by an older version or by hand: every missing part has a fixed stand-in
    result = synthetic_result()
    result.model, result.data, result.environment = {}, {}, {}
    result.settings = {"shifts": {"mode": "crop", "max_shift": 4}}
    assert describe_shifts(result) == (
        "? crop shifts within +/-4 px (none: crops of a larger canvas, new content enters at the border)"
    )
    assert describe_run(result) == f"model on ; {describe_shifts(result)}, ; "
    result.model = {"description": "a net", "source": "w.pt"}
    result.environment = {"device": "cpu"}
    result.settings = {"shift_mode": "plugin", "mode": "sampled", "shifts": {"count": 9, "max_shift": 1, "step": 2}}
    assert describe_shifts(result) == "9 plugin shifts within +/-1 px, step 2 (?)"
    assert describe_run(result) == "a net (w.pt) on ; 9 plugin shifts within +/-1 px, step 2 (?), sampled; cpu"
    result.settings = {}
    assert describe_shifts(result) == "? circular shifts (wrap-around)"


def test_sequential_gate_lines_for_both_bounds():
    from shiftaudit.gating import SequentialCheck, Threshold

    def line(bound: str, metric: str, value: float, passed: bool) -> str:
        t = Threshold(metric, bound, 0.05 if bound == "max" else 0.95)
        return SequentialCheck(t, value, value - 0.01, value + 0.01, passed, "sequential", confidence=0.99, draws=640).line()

    assert line("min", "consistency", 0.97, True) == (
        "ok   consistency 0.9700 (99 % confidence sequence 0.9600-0.9800, 640 draws) >= 0.95 (--min-consistency 0.95)"
    )
    assert line("min", "consistency", 0.90, False) == (
        "FAIL consistency 0.9000 (99 % confidence sequence 0.8900-0.9100, 640 draws) < 0.95 (--min-consistency 0.95)"
    )
    assert line("max", "variation", 0.03, True) == (
        "ok   variation 0.0300 (99 % confidence sequence 0.0200-0.0400, 640 draws) <= 0.05 (--max-variation 0.05)"
    )
    assert line("max", "variation", 0.08, False) == (
        "FAIL variation 0.0800 (99 % confidence sequence 0.0700-0.0900, 640 draws) > 0.05 (--max-variation 0.05)"
    )


def test_plain_numbers_keep_their_own_digits_in_the_table_and_in_compare():
    assert value_text(Reading("x", 0.123456, percent=False, digits=2)) == "0.12"
    assert value_text(Reading("x", 0.123456, percent=False, digits=6)) == "0.123456"
    row = CompareRow("x", False, [0.123456, 0.5], [None, None], [None, None], 2)
    assert (row.cell(0), row.cell(1)) == ("0.12", "0.50")


def test_a_change_below_half_a_picometre_reads_zero_and_from_there_on_as_a_number():
    # numerical noise between two runs of the same model is not a change; 5e-13 exactly is the first one shown
    assert _row("x", False, [0.0, 4.9e-13], [None] * 2, [None] * 2).delta_text(1).startswith("0")
    assert _row("x", False, [0.0, 5e-13], [None] * 2, [None] * 2).delta_text(1).startswith("+0.0000")


def test_sampled_consistency_names_its_pairs_and_a_question_mark_when_the_report_lacks_them():
    from shiftaudit.metrics.consistency import SampledConsistency

    entry = Proportion(0.9, 0.8, 0.95, 40)
    assert SampledConsistency.readings(entry, {"pairs": 5})[0].label == "Consistency (sampled, 5 pairs/image)"
    assert SampledConsistency.readings(entry, {})[0].label == "Consistency (sampled, ? pairs/image)"
