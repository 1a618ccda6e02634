"""``shiftaudit eval MODEL --data ...``: every shift metric in one pass, a table, a JSON report and a CI gate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from shiftaudit.cli import app
from shiftaudit.cli.choices import BackendChoice, DataKind, Mode, Precision, ShiftMode, value
from shiftaudit.cli.common import check_outputs, console, handle_errors, json_to_stdout
from shiftaudit.cli.loading import load_dataset_from_cli, load_model_from_cli
from shiftaudit.cli.options import (
    ArchKwargsOpt,
    ArchOpt,
    BackendOpt,
    BatchOpt,
    ClassMapOpt,
    DataKindOpt,
    DataOpt,
    DeviceOpt,
    ImageColumnOpt,
    JsonOpt,
    LabelColumnOpt,
    LimitOpt,
    MaxShiftOpt,
    MeanOpt,
    ModelArg,
    ModeOpt,
    NumClassesOpt,
    OutOpt,
    PairsOpt,
    PrecisionOpt,
    PresetOpt,
    QuietOpt,
    RawOpt,
    ResizeOpt,
    SeedOpt,
    ShiftModeOpt,
    ShiftStepOpt,
    SizeOpt,
    StdOpt,
    StrictOpt,
    ThreadsOpt,
    TrustPickleOpt,
    WorkersOpt,
)
from shiftaudit.cli.progress import RichProgress
from shiftaudit.cli.running import report_result, show_plan
from shiftaudit.engine.config import AuditConfig
from shiftaudit.engine.distributed import finish as finish_distributed
from shiftaudit.engine.distributed import is_main_process
from shiftaudit.engine.plan import plan_audit
from shiftaudit.engine.resume import check_resume_path
from shiftaudit.engine.runner import run_plan
from shiftaudit.errors import UsageError
from shiftaudit.gating import build_thresholds
from shiftaudit.report.outputs import report_files
from shiftaudit.report.terminal import text

LayersOpt = Annotated[
    str | None,
    typer.Option(
        "--layers",
        help="Also measure per-layer shift-equivariance: auto (Fig. 4's layers), all, or comma-separated module names; writes "
        "layers.png to --out.",
    ),
]
MinConsOpt = Annotated[
    float | None, typer.Option("--min-consistency", help="Gate: fail (exit 1) when consistency is below this fraction.")
]
MinAccOpt = Annotated[
    float | None, typer.Option("--min-accuracy", help="Gate: fail when accuracy without shift is below this fraction.")
]
MaxVarOpt = Annotated[
    float | None, typer.Option("--max-variation", help="Gate: fail when mean classification variation is above this.")
]
JunitOpt = Annotated[
    Path | None,
    typer.Option(
        "--junit",
        help="Write the gate as JUnit XML (one testcase per threshold) for CI test reports; needs at least one threshold.",
    ),
]
NoPolyphaseOpt = Annotated[
    bool,
    typer.Option(
        "--no-polyphase",
        help="Never use the polyphase (shift-and-stitch) engine, which evaluates every circular shift at once for "
        "circular-padded nets.",
    ),
]
CompileOpt = Annotated[
    bool, typer.Option("--compile", help="Run the model through torch.compile (falls back to eager if compiling fails).")
]
ExactOpt = Annotated[
    bool,
    typer.Option(
        "--exact",
        help="Gate on the full audit. Without it, a gate-only run (thresholds, no --out or --layers) draws shifts at "
        "random and stops as soon as every threshold is clearly met or missed.",
    ),
]
DecisionErrorOpt = Annotated[
    float,
    typer.Option(
        "--decision-error",
        help="Sequential gate: the largest chance that its verdict differs from the full audit's.",
    ),
]
MinAdvOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--min-adv-accuracy",
        help="Gate: RADIUS=FRACTION, fail when adversarial accuracy at that max shift is below it (repeatable).",
    ),
]


@app.command("eval")
@handle_errors
def eval_command(
    model: ModelArg,
    data: DataOpt = None,
    arch: ArchOpt = None,
    arch_kwargs: ArchKwargsOpt = None,
    num_classes: NumClassesOpt = None,
    trust_pickle: TrustPickleOpt = False,
    data_kind: DataKindOpt = DataKind.auto,
    class_map: ClassMapOpt = None,
    image_column: ImageColumnOpt = None,
    label_column: LabelColumnOpt = None,
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
    shift_mode: ShiftModeOpt = ShiftMode.circular,
    mode: ModeOpt = Mode.auto,
    pairs: PairsOpt = 5,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = Precision.fp32,
    batch_size: BatchOpt = None,
    backend: BackendOpt = BackendChoice.torch,
    threads: ThreadsOpt = None,
    json_out: JsonOpt = None,
    out: OutOpt = None,
    quiet: QuietOpt = False,
    layers: LayersOpt = None,
    min_consistency: MinConsOpt = None,
    min_accuracy: MinAccOpt = None,
    max_variation: MaxVarOpt = None,
    min_adv_accuracy: MinAdvOpt = None,
    junit: JunitOpt = None,
    exact: ExactOpt = False,
    decision_error: DecisionErrorOpt = 0.01,
    no_polyphase: NoPolyphaseOpt = False,
    compile_model: CompileOpt = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Check everything and show the audit plan (shift set, mode, metrics, engine, batch geometry, forward passes) "
            "without running it; --json writes the plan.",
        ),
    ] = False,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume",
            help="Save the audit's progress to this file as it goes; if it exists, continue from it (same final JSON as an "
            "uninterrupted run). Deleted once the report is written.",
        ),
    ] = None,
) -> None:
    """Audit MODEL on --data under shifts (circular by default; --shift-mode crop or subpixel): accuracy, consistency,
    variation, adversarial curve, accuracy map.

    Exit codes: 0 all gate thresholds hold, 1 a threshold failed, 2 bad input or usage, 130 interrupted (Ctrl-C),
    143 terminated (SIGTERM); with --resume both save the progress.
    """
    thresholds = build_thresholds(min_consistency, min_accuracy, max_variation, min_adv_accuracy)
    data = _check_flags(model, data, thresholds, json_out=json_out, out=out, junit=junit, resume=resume, quiet=quiet)
    loaded = load_model_from_cli(model, arch, num_classes, trust_pickle, arch_kwargs)
    dataset = load_dataset_from_cli(
        loaded,
        data,
        preset=value(preset),
        size=size,
        resize=resize,
        mean=mean,
        std=std,
        data_kind=data_kind.value,
        class_map=class_map,
        limit=limit,
        seed=seed,
        strict=strict,
        raw=raw,
        shift_mode=shift_mode.value,
        max_shift=max_shift,
        image_column=image_column,
        label_column=label_column,
    )
    config = AuditConfig(
        max_shift=max_shift,
        shift_step=shift_step,
        mode=mode.value,
        shift_mode=shift_mode.value,
        pairs=pairs,
        seed=seed,
        device=device,
        precision=precision.value,
        batch_size=batch_size,
        num_workers=workers,
        layers=layers,
        polyphase=False if no_polyphase else None,
        compile=compile_model,
        resume=resume,
        thresholds=thresholds,
        sequential=False if exact or out is not None else None,  # None: the plan decides (a gate-only run: sequential)
        decision_error=decision_error,
        backend=backend.value,
        threads=threads,
    )
    prepared = plan_audit(config, loaded, dataset)
    if dry_run:
        show_plan(prepared.plan, json_out, data_notes=list(dataset.notes))
        raise typer.Exit(0)
    result = run_plan(prepared, RichProgress(enabled=not quiet and is_main_process()))
    if not is_main_process():  # under torchrun every rank holds the merged result; rank 0 alone reports
        finish_distributed()
        raise typer.Exit(0)
    code = report_result(result, json_out=json_out, out=out, quiet=quiet, junit=junit, dataset=dataset)
    if resume is not None:
        resume.unlink(missing_ok=True)  # the report is written: nothing left to resume
    finish_distributed()
    raise typer.Exit(code)


def _check_flags(
    model: Path,
    data: Path | None,
    thresholds: list[Any],
    *,
    json_out: Path | None,
    out: Path | None,
    junit: Path | None,
    resume: Path | None,
    quiet: bool,
) -> Path:
    """Flags that need one another, and every output, checked before the model is loaded; returns --data."""
    if junit is not None and not thresholds:
        raise UsageError("--junit writes one testcase per gate threshold; add at least one, e.g. --min-consistency 0.9.")
    if data is None:
        raise UsageError(
            "eval needs --data (an image folder, a CIFAR-10 folder or a tensor file); try `shiftaudit demo` for a run with no "
            "files."
        )
    check_outputs(
        {"--json": json_out, "--junit": junit, "--resume": resume}, {"--out": (out, report_files())}, inputs=[model, data]
    )
    json_to_stdout(json_out)
    if resume is not None:
        check_resume_path(resume)  # a folder or a pipe is refused before the model is loaded
        if resume.exists() and not quiet:
            console.print(text(f"resuming the audit saved in {resume}", style="dim"))
    return data
