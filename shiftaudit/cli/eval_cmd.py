"""``shiftaudit eval MODEL --data ...``: every shift metric in one pass, a table, a JSON report and a CI gate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from shiftaudit.engine.distributed import finish as finish_distributed
from shiftaudit.engine.distributed import is_main_process
from shiftaudit.engine.plan import plan_shifts
from shiftaudit.engine.runner import audit
from shiftaudit.gating import build_thresholds, evaluate_gate, validate_thresholds
from shiftaudit.report.outputs import REPORT_FILES, write_report_dir
from shiftaudit.report.terminal import audit_table, describe_run, layers_table, sig
from shiftaudit.cli import app
from shiftaudit.cli.common import (
    ArchKwargsOpt,
    ArchOpt,
    BatchOpt,
    ClassMapOpt,
    DataKindOpt,
    DataOpt,
    DeviceOpt,
    LimitOpt,
    MaxShiftOpt,
    MeanOpt,
    ModeOpt,
    ModelArg,
    NumClassesOpt,
    PairsOpt,
    PrecisionOpt,
    PresetOpt,
    RawOpt,
    ResizeOpt,
    SeedOpt,
    ShiftModeOpt,
    ShiftStepOpt,
    SizeOpt,
    StdOpt,
    StrictOpt,
    TrustPickleOpt,
    WorkersOpt,
    check_outputs,
    console,
    err_console,
    handle_errors,
    json_to_stdout,
    load_model_from_cli,
    resolve_cli_preprocessing,
)
from shiftaudit.cli.progress import RichProgress

JsonOpt = Annotated[Path | None, typer.Option("--json", help="Write the JSON report to this path ('-' for stdout; the table then goes to stderr).")]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Report folder: report.json plus pictures and HTML.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No table or progress bar; only the verdict and errors.")]
LayersOpt = Annotated[str | None, typer.Option("--layers", help="Also measure per-layer shift-equivariance: auto (Fig. 4's layers), all, or comma-separated module names; writes layers.png to --out.")]
MinConsOpt = Annotated[float | None, typer.Option("--min-consistency", help="Gate: fail (exit 1) when consistency is below this fraction.")]
MinAccOpt = Annotated[float | None, typer.Option("--min-accuracy", help="Gate: fail when accuracy without shift is below this fraction.")]
MaxVarOpt = Annotated[float | None, typer.Option("--max-variation", help="Gate: fail when mean classification variation is above this.")]
JunitOpt = Annotated[Path | None, typer.Option("--junit", help="Write the gate as JUnit XML (one testcase per threshold) for CI test reports; needs at least one threshold.")]
NoPolyphaseOpt = Annotated[bool, typer.Option("--no-polyphase", help="Never use the polyphase (shift-and-stitch) engine, which evaluates every circular shift at once for circular-padded nets.")]
CompileOpt = Annotated[bool, typer.Option("--compile", help="Run the model through torch.compile (falls back to eager if compiling fails).")]
MinAdvOpt = Annotated[list[str] | None, typer.Option("--min-adv-accuracy", help="Gate: RADIUS=FRACTION, fail when adversarial accuracy at that max shift is below it (repeatable).")]


def run_eval(
    loaded: Any,
    dataset: Any,
    *,
    thresholds: list[Any],
    max_shift: int | None,
    shift_step: int | float | None,
    mode: str,
    pairs: int,
    seed: int,
    device: str,
    precision: str,
    batch_size: int | None,
    workers: int | None,
    quiet: bool,
    layers: str | None = None,
    polyphase: bool | None = None,
    compile_model: bool = False,
    resume: Path | None = None,
    shift_mode: str = "circular",
) -> Any:
    """Plan, validate the gate against the plan, run the audit and attach the gate verdict."""
    from shiftaudit.shifts.modes import input_geometry

    size, margin = input_geometry(dataset, shift_mode, None, max_shift)  # crop mode: the data holds larger canvases
    shifts, exhaustive = plan_shifts(size, max_shift=margin if max_shift is None and margin else max_shift,
                                     shift_step=shift_step, mode=mode, shift_mode=shift_mode)
    validate_thresholds(thresholds, labelled=dataset.has_labels, exhaustive=exhaustive, radii=shifts.radii)
    result = audit(
        loaded,
        dataset,
        shifts=shifts,
        mode=mode,
        shift_mode=shift_mode,
        pairs=pairs,
        seed=seed,
        device=device,
        precision=precision,
        batch_size=batch_size,
        num_workers=workers,
        progress=RichProgress(enabled=not quiet),
        layers=layers,
        polyphase=polyphase,
        compile=compile_model,
        resume=resume,
    )
    if thresholds:
        result.gate = evaluate_gate(result, thresholds).to_json()
    return result


def load_dataset_from_cli(loaded: Any, data: Path, *, preset, size, resize, mean, std, data_kind, class_map, limit, seed, strict, raw,  # type: ignore[no-untyped-def]
                          shift_mode: str = "circular", max_shift: int | None = None):
    from shiftaudit.data import load_data
    from shiftaudit.shifts.modes import get_shift_mode

    prep = resolve_cli_preprocessing(loaded, preset, size, resize, mean, std, data)
    margin = get_shift_mode(shift_mode, "--shift-mode").canvas_margin(None, max_shift, prep.size)
    return load_data(
        data,
        preprocessing=prep,
        kind=data_kind,
        class_map=class_map,
        limit=limit,
        seed=seed,
        strict=strict,
        raw=raw,
        num_classes=loaded.num_classes,
        canvas_margin=margin,
    )


def write_outputs(result: Any, *, json_out: Path | None, out: Path | None, junit: Path | None = None,
                  dataset: Any = None) -> list[Path]:
    """Write every output of the run, all of them or none (a full disk at the last picture leaves no new report
    beside old pictures); returns the files written, for the "wrote ..." lines."""
    from shiftaudit.atomicio import all_or_nothing

    written: list[Path] = []
    with all_or_nothing():
        if json_out is not None:
            result.save_json(json_out)
            if str(json_out) != "-":
                written.append(json_out)
        if out is not None:
            written += write_report_dir(result, out, dataset=dataset)
        if junit is not None:
            from shiftaudit.report.junit import write_junit

            written.append(write_junit(result, junit))
    return written


def report_result(
    result: Any, *, json_out: Path | None, out: Path | None, quiet: bool, junit: Path | None = None, dataset: Any = None
) -> int:
    """Print, write the outputs, say the verdict; returns the exit code (1 when the gate failed)."""
    from shiftaudit.engine.runner import LABEL_MISMATCH

    if not quiet:
        console.print(audit_table(result, title=describe_run(result)))
        if "layers" in result.metrics:
            console.print()
            console.print(layers_table(result.metrics["layers"]))
        for note in result.notes:
            if not note.startswith(LABEL_MISMATCH):
                console.print(Text(f"note: {note}", style="dim"), soft_wrap=True)
        t = result.timing
        if t:
            console.print(f"{result.data['num_images']} images in {sig(t['seconds'])} s ({sig(t['images_per_s'])} images/s, "
                          f"{sig(t['forwards_per_s'])} forward passes/s)", style="dim")
    for note in result.notes:  # numbers that are likely wrong: said on stderr, even with --quiet
        if note.startswith(LABEL_MISMATCH):
            err_console.print(Text(f"warning: {note}", style="yellow"), soft_wrap=True)
    for path in write_outputs(result, json_out=json_out, out=out, junit=junit, dataset=dataset):
        if not quiet:
            console.print(f"wrote {path}")
    if result.gate is None:
        return 0
    checks = result.gate["checks"]
    failed = [c for c in checks if not c["passed"]]
    for c in checks:
        if not c["passed"] or not quiet:
            err_console.print(Text(c["message"], style="" if c["passed"] else "red"), soft_wrap=True)
    if failed:
        err_console.print(f"gate: FAILED ({len(failed)} of {len(checks)} checks)", soft_wrap=True, style="bold red")
        return 1
    err_console.print(f"gate: passed ({len(checks)} checks)", soft_wrap=True, style="green")
    return 0


@app.command("eval")
@handle_errors
def eval_command(
    model: ModelArg,
    data: DataOpt = None,
    arch: ArchOpt = None,
    arch_kwargs: ArchKwargsOpt = None,
    num_classes: NumClassesOpt = None,
    trust_pickle: TrustPickleOpt = False,
    data_kind: DataKindOpt = "auto",
    class_map: ClassMapOpt = None,
    preset: PresetOpt = None,
    size: SizeOpt = None,
    resize: ResizeOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    raw: RawOpt = False,
    limit: LimitOpt = None,
    seed: SeedOpt = 0,
    strict: StrictOpt = False,
    workers: WorkersOpt = None,
    max_shift: MaxShiftOpt = None,
    shift_step: ShiftStepOpt = None,
    shift_mode: ShiftModeOpt = "circular",
    mode: ModeOpt = "auto",
    pairs: PairsOpt = 5,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    batch_size: BatchOpt = None,
    json_out: JsonOpt = None,
    out: OutOpt = None,
    quiet: QuietOpt = False,
    layers: LayersOpt = None,
    min_consistency: MinConsOpt = None,
    min_accuracy: MinAccOpt = None,
    max_variation: MaxVarOpt = None,
    min_adv_accuracy: MinAdvOpt = None,
    junit: JunitOpt = None,
    no_polyphase: NoPolyphaseOpt = False,
    compile_model: CompileOpt = False,
    resume: Annotated[Path | None, typer.Option("--resume", help="Save the audit's progress to this file as it goes; if it exists, continue from it (same final JSON as an uninterrupted run). Deleted once the report is written.")] = None,
) -> None:
    """Audit MODEL on --data under shifts (circular by default; --shift-mode crop or subpixel): accuracy, consistency,
    variation, adversarial curve, accuracy map.

    Exit codes: 0 all gate thresholds hold, 1 a threshold failed, 2 bad input or usage, 130 interrupted (Ctrl-C),
    143 terminated (SIGTERM); with --resume both save the progress.
    """
    from shiftaudit.errors import UsageError

    thresholds = build_thresholds(min_consistency, min_accuracy, max_variation, min_adv_accuracy)
    if junit is not None and not thresholds:
        raise UsageError("--junit writes one testcase per gate threshold; add at least one, e.g. --min-consistency 0.9.")
    if data is None:
        raise UsageError("eval needs --data (an image folder, a CIFAR-10 folder or a tensor file); try `shiftaudit demo` for a run with no files.")
    check_outputs({"--json": json_out, "--junit": junit, "--resume": resume}, {"--out": (out, REPORT_FILES)}, inputs=[model, data])
    json_to_stdout(json_out)
    if resume is not None:
        from shiftaudit.engine.resume import check_resume_path

        check_resume_path(resume)  # a folder or a pipe is refused before the model is loaded
    loaded = load_model_from_cli(model, arch, num_classes, trust_pickle, arch_kwargs)
    dataset = load_dataset_from_cli(
        loaded, data, preset=preset, size=size, resize=resize, mean=mean, std=std, data_kind=data_kind,
        class_map=class_map, limit=limit, seed=seed, strict=strict, raw=raw, shift_mode=shift_mode, max_shift=max_shift,
    )
    if resume is not None and resume.exists() and not quiet:
        console.print(Text(f"resuming the audit saved in {resume}", style="dim"))
    result = run_eval(
        loaded, dataset, thresholds=thresholds, max_shift=max_shift, shift_step=shift_step, mode=mode, pairs=pairs,
        seed=seed, device=device, precision=precision, batch_size=batch_size, workers=workers,
        quiet=quiet or not is_main_process(), layers=layers, polyphase=False if no_polyphase else None,
        compile_model=compile_model, resume=resume, shift_mode=shift_mode,
    )
    if not is_main_process():  # under torchrun every rank holds the merged result; rank 0 alone reports
        finish_distributed()
        raise typer.Exit(0)
    code = report_result(result, json_out=json_out, out=out, quiet=quiet, junit=junit, dataset=dataset)
    if resume is not None:
        resume.unlink(missing_ok=True)  # the report is written: nothing left to resume
    finish_distributed()
    raise typer.Exit(code)
