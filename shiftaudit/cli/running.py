"""Reporting an audit, as ``eval`` and ``demo`` do: the tables, the outputs, the gate's verdict; ``eval --dry-run``'s plan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shiftaudit.cli.common import console, err_console, say_stale
from shiftaudit.engine.runner import LABEL_MISMATCH
from shiftaudit.files import all_or_nothing, write_json_atomic
from shiftaudit.report.junit import write_junit
from shiftaudit.report.outputs import write_report_dir
from shiftaudit.report.sequential import is_sequential, sequential_summary, sequential_table
from shiftaudit.report.terminal import audit_table, describe_preprocessing, describe_run, layers_table, sig, text


def write_outputs(
    result: Any, *, json_out: Path | None, out: Path | None, junit: Path | None = None, dataset: Any = None
) -> list[Path]:
    """Write every output of the run, all of them or none (a full disk at the last picture leaves no new report
    beside old pictures); returns the files written, for the "wrote ..." lines."""
    written: list[Path] = []
    with all_or_nothing():
        if json_out is not None:
            result.save_json(json_out)
            if str(json_out) != "-":
                written.append(json_out)
        if out is not None:
            written += write_report_dir(result, out, dataset=dataset)
        if junit is not None:
            written.append(write_junit(result, junit))
    return written


def report_result(
    result: Any, *, json_out: Path | None, out: Path | None, quiet: bool, junit: Path | None = None, dataset: Any = None
) -> int:
    """Print, write the outputs, say the verdict; returns the exit code (1 when the gate failed)."""
    sequential = is_sequential(result)
    if not quiet:
        width = console.width
        console.print(sequential_table(result) if sequential else audit_table(result, title=describe_run(result), width=width))
        if "layers" in result.metrics:
            console.print()
            console.print(layers_table(result.metrics["layers"], width=width))
        for note in result.notes:
            if not note.startswith(LABEL_MISMATCH):
                console.print(text(f"note: {note}", style="dim"), soft_wrap=True)
        t = result.timing
        if sequential:
            console.print(sequential_summary(result), style="dim")
        elif t:
            exported = (result.settings.get("backend") or {}).get("export_seconds")
            console.print(
                f"{result.data['num_images']} images in {sig(t['seconds'])} s ({sig(t['images_per_s'])} images/s, "
                f"{sig(t['forwards_per_s'])} forward passes/s)"
                + (f", after {sig(exported)} s exporting and compiling the model" if exported is not None else ""),
                style="dim",
            )
    for note in result.notes:  # numbers that are likely wrong: said on stderr, even with --quiet
        if note.startswith(LABEL_MISMATCH):
            err_console.print(text(f"warning: {note}", style="yellow"), soft_wrap=True)
    with all_or_nothing() as outputs:
        written = write_outputs(result, json_out=json_out, out=out, junit=junit, dataset=dataset)
    for path in written:
        if not quiet:
            console.print(f"wrote {path}")
    say_stale(outputs, quiet)
    if result.gate is None:
        return 0
    checks = result.gate["checks"]
    failed = [c for c in checks if not c["passed"]]
    for c in checks:
        if not c["passed"] or not quiet:
            err_console.print(text(c["message"], style="" if c["passed"] else "red"), soft_wrap=True)
    if failed:
        err_console.print(f"gate: FAILED ({len(failed)} of {len(checks)} checks)", soft_wrap=True, style="bold red")
        return 1
    err_console.print(f"gate: passed ({len(checks)} checks)", soft_wrap=True, style="green")
    return 0


PLAN_SCHEMA = "shiftaudit/audit-plan"


def show_plan(plan: Any, json_out: Path | None, data_notes: list[str] | None = None) -> None:
    """``eval --dry-run``: the plan as a table (and as JSON with ``--json``), nothing run; ``data_notes``: what loading
    the data noted so far (an assumed mean and std), said after the plan's own notes."""
    from rich.table import Table

    if json_out is not None:
        write_json_atomic(json_out, {"schema": PLAN_SCHEMA, "schema_version": 1, "plan": plan.to_json()})
    t = Table(
        title="Audit plan (dry run: nothing was run)", title_justify="left", show_edge=False, pad_edge=False, show_header=False
    )
    t.add_column("", style="bold")
    t.add_column("", overflow="fold")
    rows = [
        ("shifts", f"{plan.shifts.describe()}; border: {plan.shifts.padding}"),
        ("mode", f"{plan.mode}, {plan.pairs} random pairs per image, seed {plan.seed}"),
        (
            "images",
            f"{plan.num_images} at {plan.input_size[0]}x{plan.input_size[1]}"
            + (f" (canvas margin {plan.canvas_margin} px)" if plan.canvas_margin else ""),
        ),
        ("preprocessing", describe_preprocessing(plan.preprocessing) or "none: the tensors are the model's input as given"),
        ("metrics", ", ".join(plan.metrics)),
        ("engine", plan.strategy + (" (torch.compile)" if plan.compiled else "")),
        ("device", f"{plan.device}, {plan.precision}" + (", channels_last" if plan.channels_last else "")),
        (
            "batches",
            f"{plan.device_batch} rows per forward pass, {plan.image_batch} image{'' if plan.image_batch == 1 else 's'} per "
            "batch",
        ),
        ("forward rows", f"{plan.forward_rows:,} ({plan.slots_per_image} per image)"),
    ]
    if plan.backend is not None:
        rows.append(("backend", describe_backend(plan.backend)))
    if plan.sequential:
        rows.append(("gate", "sequential: random draws until every threshold is decided (the rows above if undecided)"))
    for key, value in rows:
        t.add_row(key, text(value))
    console.print(t)
    for note in [*plan.notes, *(data_notes or [])]:
        console.print(text(f"note: {note}", style="dim"), soft_wrap=True)


def describe_backend(backend: Any) -> str:
    """Who runs the forward passes, in a few words: ``openvino (asked: auto), exported in 4.2 s, probe: ...``."""
    words = backend.name + ("" if backend.asked == backend.name else f" (asked: {backend.asked})")
    if backend.export_seconds is not None:
        words += f", exported and compiled in {backend.export_seconds:.1f} s"
    probe = backend.probe
    if probe is not None:
        words += (
            f"; probe of {probe.rows} images: max |logit difference| {probe.max_abs_logit_diff:.2g}, top-1 agreement "
            f"{100 * probe.top1_agreement:.0f} %"
        )
    return words
