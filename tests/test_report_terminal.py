"""Terminal output a practitioner reads in a CI log: 80 columns, no live bar, numbers that say what they are."""

from __future__ import annotations

import re
from typing import Any

import pytest
from rich.console import Console

from shiftaudit.cli import progress as progress_mod
from shiftaudit.cli.progress import RichProgress
from shiftaudit.report.rows import pct
from shiftaudit.report.terminal import audit_table, comparison_table, describe_run, sig
from tests.helpers import cli, synthetic_result


def render(renderable, width: int = 80) -> str:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(renderable)
    return console.export_text()


def test_rates_keep_three_significant_digits_and_never_print_zero():
    assert [sig(v) for v in (0.00412, 0.35, 3.14159, 412.3, 12345.6)] == ["0.00412", "0.350", "3.14", "412", "12,346"]
    assert sig(float("nan")) == "-" and sig(None) == "-" and sig(0.0) == "0"
    assert pct(float("nan")) == "-" and pct(None) == "-"  # never "nan %"


def test_tables_fit_80_columns_with_whole_numbers_and_user_text_kept_literal():
    r = synthetic_result()
    r.model["source"] = "/ckpt/[bold]x[/bold]/model.pt"  # a path that looks like rich markup stays as written
    text = render(audit_table(r, title=describe_run(r)))
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "[bold]x[/bold]" in text
    for value in ("90.0 %", "[85.0, 94.0]", "92.00 %"):
        assert value in text  # numbers are never wrapped across lines
    three = [("baseline-run", r), ("patched-binomial5", synthetic_result(0.1)), ("patched-tri3", synthetic_result(0.1))]
    text = render(comparison_table(three, width=80))
    assert max(len(line) for line in text.splitlines()) <= 80
    assert text.count("-10.00 pt *") >= 4 and "Metric" in text  # no column collapsed to nothing


def test_plain_progress_lines_when_stderr_is_not_a_terminal(monkeypatch):
    console = Console(width=80, record=True, file=open("/dev/null", "w"), force_terminal=False)  # noqa: SIM115
    monkeypatch.setattr(progress_mod, "err_console", console)
    bar = RichProgress(min_gap_s=0.0)  # plain is picked because the console is not a terminal
    bar.start(20, "auditing 20 images x 81 shifts")
    for _ in range(20):
        bar.advance(1)
    bar.stop()
    lines = console.export_text().splitlines()
    assert len(lines) == 10  # one per tenth of the images
    assert re.fullmatch(
        r"auditing 20 images x 81 shifts: 2/20 images \(10 %\), [\d.,]+ images/s, [\d.,]+ s elapsed, about [\d.,]+ s left",
        lines[0],
    )
    assert lines[-1].startswith("auditing 20 images x 81 shifts: 20/20 images (100 %)")


def test_short_runs_print_no_progress_line(monkeypatch):
    console = Console(width=80, record=True, file=open("/dev/null", "w"), force_terminal=False)  # noqa: SIM115
    monkeypatch.setattr(progress_mod, "err_console", console)
    bar = RichProgress()
    bar.start(4, "auditing")
    bar.advance(4)
    bar.stop()
    assert console.export_text() == ""


def test_version_flag_prints_the_installed_version():
    from importlib.metadata import version

    res = cli("--version")
    assert res.exit_code == 0 and res.stdout.strip() == f"shiftaudit {version('shiftaudit')}"


# -- issue 24: user strings in every table are escaped, and measured as shown ----------------------------------------
NASTY = "\x1b[31m\r\n\x07\x85\x9b\u202e[bold]"
RAW_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")  # all but "\n"


def _nasty_tables() -> list[Any]:
    from torch import nn

    from shiftaudit.antialias.inspection import inspect_model
    from shiftaudit.report.terminal import inspection_table, layers_table

    r = synthetic_result()
    r.model["source"] = f"/models/{NASTY}.pt"
    r.data["description"] = f"ImageFolder d{NASTY}"
    r.metrics[f"own{NASTY}"] = {"value": 0.5}  # a metric no registry knows: its name is the row's label
    layer = {
        "resolution": [8, 8],
        "stride": 2,
        "equivariance": {"mean": 0.1},
        "invariance": {"mean": 0.2},
        "reference_distance": 0.5,
        "exact_modulo": 2,
    }
    net = nn.Sequential()
    net.add_module(f"c{NASTY}", nn.Conv2d(3, 4, 3, stride=2, padding=1))
    net.add_module("pool", nn.AdaptiveAvgPool2d(1))
    return [
        audit_table(r, title=describe_run(r), width=120),
        comparison_table([(f"base{NASTY}", r), ("pat\x1bched\u202e", synthetic_result(0.1))], width=120),
        layers_table({"layers": [{"name": f"conv{NASTY}", **layer}, {"name": "fc", **layer}]}, width=120),
        inspection_table(inspect_model(net.eval(), (16, 16)), width=120),
    ]


@pytest.mark.parametrize("which", ["audit", "comparison", "layers", "inspection"])
def test_user_strings_in_every_table_are_escaped_and_columns_stay_aligned(which):
    """Titles, row labels, run names (compare's headers), layer names: rich strips BEL and CR from a string but writes
    ESC, CSI and a bidi override as they are. Escaped before the columns are measured, so the columns stay aligned
    even on a plain rich console (a library user's)."""
    table = _nasty_tables()[["audit", "comparison", "layers", "inspection"].index(which)]
    shown = render(table, width=120)
    found = RAW_CONTROL.search(shown)
    assert found is None, shown
    assert "\\x1b[31m" in shown and "\\u202e[bold]" in "".join(shown.split())
    bars = {tuple(i for i, c in enumerate(line) if c in "│┃") for line in shown.splitlines() if "│" in line or "┃" in line}
    assert len(bars) == 1, shown
