"""Terminal output a practitioner reads in a CI log: 80 columns, no live bar, numbers that say what they are."""

from __future__ import annotations

import re

from rich.console import Console

from shiftaudit.cli import progress as progress_mod
from shiftaudit.cli.progress import RichProgress
from shiftaudit.report.terminal import audit_table, comparison_table, describe_run, pct, sig
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
