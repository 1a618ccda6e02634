"""The compare rows and the tables' layout decisions, unit by unit, with values worked out by hand.

The mutation run showed what the rendering snapshots leave open: changes of non-percentage rows, a metric one run
lacks, intervals that only touch, where a wide compare table starts to split, a non-square inspection title, and a
blur layer whose class name does not say "blur".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from rich.console import Group
from rich.table import Table
from torch import nn

from shiftaudit.antialias.inspection import inspect_model
from shiftaudit.report.terminal import CompareRow, compare_rows, comparison_table, inspection_table
from tests.helpers import synthetic_result


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


def test_three_runs_split_into_tables_exactly_where_they_stop_fitting():
    runs = [("Baseline", synthetic_result(0.0)), ("Baseline recalibrated on 256 images", synthetic_result(0.02)),
            ("Patched binomial5 distilled", synthetic_result(0.05))]
    # metric names fold to 16; three value columns of "92.00 %" (7) and two change columns of "-2.00 pt" (8); 5 separators
    assert 16 + 3 * 7 + 2 * 8 + 3 * 5 == 68
    assert isinstance(comparison_table(runs, width=68), Table)
    split = comparison_table(runs, width=67)
    assert isinstance(split, Group) and len(split.renderables) == 2
    assert [str(t.title) for t in split.renderables] == ["Before / after (1 of 2)", "Before / after (2 of 2)"]
    assert isinstance(comparison_table(runs), Table)  # no width: one table


def test_two_runs_never_split_even_when_too_narrow():
    table = comparison_table([("a", synthetic_result(0.0)), ("b", synthetic_result(0.1))], width=30)
    assert isinstance(table, Table) and str(table.title) == "Before / after"


class Downsample(nn.Module):
    """A blur-and-subsample layer whose class name does not say "blur" (as some checkpoints name theirs)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("filt", torch.full((channels, 1, 3, 3), 1 / 9))
        self.channels, self.stride = channels, 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.filt, stride=2, groups=self.channels)


def test_inspection_names_a_blur_layer_and_a_non_square_input():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), Downsample(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 2)).eval()
    table = inspection_table(inspect_model(model, (32, 24)), width=100)
    assert table.title == "Downsampling points at 32x24 (total stride 2)"
    types = list(table.columns[1].cells)
    assert str(types[0]) == "Downsample (blurpool)"  # the kind is said when the name does not say it
