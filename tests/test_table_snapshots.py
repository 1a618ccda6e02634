"""The compare, inspect and per-layer tables exactly as a person reads them, at the widths terminals have.

The row tests in test_rendering.py parse numbers back; these pin the rest of what is read: titles, column headers,
captions, and where names wrap at 80 and 120 columns (the layout arithmetic, which the mutation run showed no
other test reads). At 60 columns three runs no longer fit side by side and the compare table splits into one table
per later run; no line is ever wider than the console (a cropped line once cut "do not" out of the caption).
A snapshot that changes on purpose is rewritten with ``SHIFTAUDIT_UPDATE_SNAPSHOTS=1`` and reviewed in the diff.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console, Group
from rich.table import Table

from shiftaudit.report.terminal import comparison_table, inspection_table, layers_table
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


@pytest.mark.parametrize("width", [60, 80, 120])
def test_comparison_of_two_runs(width):
    runs = [("Baseline", synthetic_result(0.0)), ("Patched (tri3)", synthetic_result(0.1))]
    _check(f"compare2_{width}", _render(comparison_table(runs, width=width), width))


@pytest.mark.parametrize("width", [60, 80, 120])
def test_comparison_of_three_runs_with_long_names(width):
    runs = [
        ("Baseline", synthetic_result(0.0)),
        ("Baseline recalibrated on 256 images", synthetic_result(0.02)),
        ("Patched binomial5 distilled", synthetic_result(0.05)),
    ]
    _check(f"compare3_{width}", _render(comparison_table(runs, title="Three runs", width=width), width))


@pytest.mark.parametrize("width", [60, 80, 120])
def test_inspection_of_resnet18(width):
    import torchvision

    from shiftaudit.antialias.inspection import inspect_model

    insp = inspect_model(torchvision.models.resnet18(num_classes=10).eval(), (64, 64))
    table = inspection_table(insp, {"Patch": {"maxpool": "MaxBlurPool(tri3)", "layer2.0.conv1": "conv + BlurPool"}}, width)
    _check(f"inspect_resnet18_{width}", _render(table, width))


LAYERS = {
        "layers": [
            {"name": "features.0", "resolution": [32, 32], "stride": 1, "equivariance": {"mean": 0.0},
             "invariance": {"mean": 0.3125}, "reference_distance": 0.5, "exact_modulo": 1},
            {"name": "features.some_long_block_name.3", "resolution": [16, 8], "stride": 2,
             "equivariance": {"mean": 0.04321}, "invariance": {"mean": 0.25}, "reference_distance": 0.4,
             "exact_modulo": 2},
            {"name": "fc", "resolution": [1, 1], "stride": 32, "equivariance": {"mean": 0.125},
             "invariance": {"mean": 0.125}, "reference_distance": None, "exact_modulo": None},
        ]
    }


def test_layers_table():
    for width in (24, 50, 72, 73, 80, 120):  # below 73 columns here each layer becomes a block of label-value lines
        _check(f"layers_{width}", _render(layers_table(LAYERS, width), width))


def test_layers_table_switches_to_blocks_exactly_where_the_columns_stop_fitting():
    # Layer folds to 12; Size 5, Stride 6, Equiv. 6, Equiv./(ref/2) 14, Invar. 6, Modulo 6; 6 separators of 3
    assert 12 + 5 + 6 + 6 + 14 + 6 + 6 + 3 * 6 == 73
    assert isinstance(layers_table(LAYERS, 73), Table) and isinstance(layers_table(LAYERS), Table)
    assert isinstance(layers_table(LAYERS, 72), Group)


def test_layers_table_with_short_names_on_a_narrow_console():
    layers = {"layers": [{"name": "fc", "resolution": [1, 1], "stride": 32, "equivariance": {"mean": 0.125},
                          "invariance": {"mean": 0.125}, "reference_distance": 0.25, "exact_modulo": None}]}
    _check("layers_short_40", _render(layers_table(layers, 40), 40))
