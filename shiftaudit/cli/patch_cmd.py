"""``shiftaudit patch MODEL``: blur before every subsampling, weights kept; save it and compare before/after."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from shiftaudit.antialias import SMALL_CALIBRATION, PatchConfig, PatchResult, patch_model, recalibrate_batchnorm, top1_agreement
from shiftaudit.antialias.methods import get_patch_method
from shiftaudit.antialias.report import PatchComparison, PatchReport, compare_patch
from shiftaudit.cli import app
from shiftaudit.cli.choices import DataKind, Mode, ModelFormat, Pad, PatchMethod, Precision, ShiftMode, value
from shiftaudit.cli.common import check_outputs, console, err_console, handle_errors, json_to_stdout, say_stale
from shiftaudit.cli.loading import load_dataset_from_cli, load_model_from_cli, resolve_cli_preprocessing
from shiftaudit.cli.options import (
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
    ModelArg,
    ModeOpt,
    NumClassesOpt,
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
    TrustPickleOpt,
    WorkersOpt,
)
from shiftaudit.cli.patch_views import latency_table, latency_warning, rebuild_message, steps_table
from shiftaudit.cli.progress import RichProgress
from shiftaudit.cli.running import run_eval
from shiftaudit.errors import UsageError
from shiftaudit.report.terminal import sig, text

RUN_FOLDERS = ("before", "after", "baseline_recalibrated")  # patch --eval --out: one report folder per model
UNPATCHABLE = {  # whole-model formats whose layers are a fixed graph, not modules to rewrite
    "torchscript": "A TorchScript archive",
    "pt2": "A torch.export archive (.pt2)",
    "onnx": "An ONNX model",
}

MethodOpt = Annotated[
    PatchMethod,
    typer.Option(
        "--method",
        help="blurpool (blur, then subsample) or aps (adaptive polyphase sampling: keep the phase of largest norm; exactly "
             "invariant with --circular-conv --stem).",
    ),
]
FilterOpt = Annotated[
    str | None,
    typer.Option(
        "--filter",
        "-f",
        help="Blur filter from the paper's Table 1 (`shiftaudit filters` lists them). Default: tri3 for blurpool (post hoc it "
             "keeps more accuracy than binomial5; see docs/patching.md), none (delta) for aps.",
    ),
]
PadOpt = Annotated[
    Pad | None, typer.Option("--pad", case_sensitive=False, help="Blur padding. Default: reflect for blurpool, circular for aps.")
]


@app.command("patch")
@handle_errors
def patch_command(
    model: ModelArg,
    arch: ArchOpt = None,
    arch_kwargs: ArchKwargsOpt = None,
    num_classes: NumClassesOpt = None,
    trust_pickle: TrustPickleOpt = False,
    method: MethodOpt = PatchMethod.blurpool,
    filter_name: FilterOpt = None,
    pad: PadOpt = None,
    stem: Annotated[
        bool, typer.Option("--stem/--no-stem", help="Also blur the strided conv that reads the pixels (costs the most).")
    ] = False,
    shortcuts: Annotated[bool, typer.Option("--shortcuts/--no-shortcuts", help="Blur before strided 1x1 shortcut convs.")] = True,
    only: Annotated[
        list[str] | None, typer.Option("--only", help="Patch only this layer (and what is under it); repeatable, globs allowed.")
    ] = None,
    skip: Annotated[list[str] | None, typer.Option("--skip", help="Leave this layer alone; repeatable, globs allowed.")] = None,
    circular_conv: Annotated[
        bool, typer.Option("--circular-conv", help="Make every conv's zero padding circular (the paper's clean testbed).")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would change and stop.")] = False,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Save the patched model here: .safetensors (weights and metadata; needs shiftaudit to rebuild), or .pt2 "
                 "(a torch.export archive: graph, weights and metadata; runs wherever torch runs).",
        ),
    ] = None,
    fmt: Annotated[
        ModelFormat | None,
        typer.Option(
            "--format",
            help="How -o saves the patched model. Default: pt2 for an -o ending in .pt2, else safetensors. torchscript is "
                 "deprecated by torch (still written and read, no longer recommended): use pt2.",
        ),
    ] = None,
    recalibrate: Annotated[
        int,
        typer.Option(
            "--recalibrate",
            min=0,
            help="Re-estimate the statistics of the BatchNorm layers after the first blur on this many --calibration-data "
                 "images, drawn in a random order seeded by --seed (labels unused).",
        ),
    ] = 0,
    calibration_data: Annotated[
        Path | None,
        typer.Option(
            "--calibration-data",
            help="Images for --recalibrate (any data --data reads; labels ignored). Keep them apart from the --data you "
                 "evaluate on.",
        ),
    ] = None,
    distill_data: Annotated[
        Path | None,
        typer.Option(
            "--distill",
            help="Fine-tune the patched model to agree with the original (label-free distillation, random circular shifts) on "
                 "the images here (any data --data reads; labels ignored).",
        ),
    ] = None,
    distill_steps: Annotated[
        int, typer.Option("--distill-steps", min=1, help="Distillation budget: optimiser steps (batches of 32).")
    ] = 300,
    distill_seconds: Annotated[
        float,
        typer.Option(
            "--distill-seconds",
            min=0.001,
            help="Distillation budget: seconds of training; it stops at whichever budget comes first.",
        ),
    ] = 120.0,
    distill_lr: Annotated[
        float, typer.Option("--distill-lr", min=1e-9, help="Distillation learning rate (Adam, every parameter).")
    ] = 1e-3,
    min_agreement: Annotated[
        float,
        typer.Option(
            "--min-agreement",
            min=0.0,
            max=1.0,
            help="Warn when the patched model's top-1 agrees with the original's on fewer of the --data images (at zero "
                 "shift) than this share.",
        ),
    ] = 0.9,
    evaluate: Annotated[
        bool, typer.Option("--eval", help="Audit the original and the patched model on --data and compare them side by side.")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="With --eval: write the report folder `eval --out` writes for each model (sub-folders before/, after/, and "
                 "baseline_recalibrated/ with --recalibrate) and report.html with them side by side.",
        ),
    ] = None,
    data: DataOpt = None,
    data_kind: DataKindOpt = DataKind.auto,
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
    mode: ModeOpt = Mode.auto,
    shift_mode: ShiftModeOpt = ShiftMode.circular,
    pairs: PairsOpt = 5,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = Precision.fp32,
    batch_size: BatchOpt = None,
    json_out: Annotated[
        Path | None,
        typer.Option("--json", help="Write the patch report (and the before/after audits with --eval) as JSON ('-' for stdout)."),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Anti-alias MODEL: MaxPool -> MaxBlurPool, strided conv -> conv + BlurPool, AvgPool -> BlurPool, weights kept."""
    from shiftaudit.engine.config import resolve_device
    from shiftaudit.report.outputs import side_by_side_files

    _refuse_flag_mixes(
        evaluate=evaluate,
        data=data,
        recalibrate=recalibrate,
        calibration_data=calibration_data,
        out=out,
        dry_run=dry_run,
        output=output,
        distill_data=distill_data,
    )
    config = PatchConfig(
        method=method.value,
        filter=filter_name,
        pad=value(pad) or get_patch_method(method.value).default_pad,
        stem=stem,
        shortcuts=shortcuts,
        circular_conv=circular_conv,
        only=tuple(only or ()),
        skip=tuple(skip or ()),
    )
    check_outputs({"--output": output, "--json": json_out}, {"--out": (out, side_by_side_files(RUN_FOLDERS))}, inputs=[model])
    json_to_stdout(json_out)
    fmt = fmt or (ModelFormat.pt2 if output is not None and output.suffix.lower() == ".pt2" else ModelFormat.safetensors)
    if output is not None:
        from shiftaudit.loading.saving import check_save_path

        check_save_path(output, fmt.value, flag="--output", format_flag="--format ")
    loaded = load_model_from_cli(model, arch, num_classes, trust_pickle, arch_kwargs)
    if loaded.format in UNPATCHABLE:
        raise UsageError(
            f"{UNPATCHABLE[loaded.format]} cannot be patched: patching rewrites the PyTorch modules, so it needs the PyTorch "
            "model; pass its weights (state dict or safetensors) with --arch."
        )
    prep = resolve_cli_preprocessing(loaded, value(preset), size, resize, mean, std, data)
    if output is not None and fmt == ModelFormat.safetensors and not loaded.arch:
        raise UsageError("Saving a patched model as safetensors needs its architecture: pass --arch, or save it as .pt2.")
    if dry_run:
        _show_dry_run(loaded.model, config, prep)
        return

    result = patch_model(loaded.model, config)
    _show_patch(result, quiet)

    def load(path: Path, **how: Any) -> Any:
        return load_dataset_from_cli(
            loaded,
            path,
            preset=value(preset),
            size=size,
            resize=resize,
            mean=mean,
            std=std,
            seed=seed,
            strict=strict,
            raw=raw,
            **how,
        )

    dataset = (
        None
        if data is None
        else load(
            data,
            data_kind=data_kind.value,
            class_map=class_map,
            limit=limit,
            shift_mode=shift_mode.value if evaluate else "circular",
            max_shift=max_shift,
        )
    )
    unlabelled = {"data_kind": "auto", "class_map": None, "limit": None}
    calibration = None if calibration_data is None else load(calibration_data, **unlabelled)
    distill_set = None if distill_data is None else load(distill_data, **unlabelled)
    dev = resolve_device(device)
    report = PatchReport(
        model=str(model), patch=result, min_agreement=min_agreement, output=None if output is None else str(output)
    )
    control_model = None
    if recalibrate:
        report, control_model = _recalibrate(
            report,
            loaded.model,
            calibration,
            calibration_data,
            num_images=recalibrate,
            seed=seed,
            device=dev,
            quiet=quiet,
            control=evaluate,
        )
    if distill_set is not None:
        report = _distill(
            report,
            loaded.model,
            distill_set,
            distill_data,
            steps=distill_steps,
            seconds=distill_seconds,
            seed=seed,
            lr=distill_lr,
            max_shift=max_shift,
            device=dev,
            quiet=quiet,
        )
    result.model.eval().cpu()
    loaded.model.eval().cpu()
    if dataset is not None and result.patched:
        report = _agreement(report, loaded.model, dataset, device=dev)
    if evaluate:
        audit_options: dict[str, Any] = dict(
            thresholds=[],
            max_shift=max_shift,
            shift_step=shift_step,
            mode=mode.value,
            shift_mode=shift_mode.value,
            pairs=pairs,
            seed=seed,
            device=device,
            precision=precision.value,
            batch_size=batch_size,
            workers=workers,
            quiet=quiet,
        )
        report = _compare(report, loaded, dataset, control_model, (1, prep.channels, *prep.size), dev, audit_options)
    from shiftaudit.files import all_or_nothing

    with all_or_nothing() as outputs:
        written = _write(report, loaded, prep, model=model, output=output, fmt=fmt.value, json_out=json_out, out=out,
                         dataset=dataset)
    _say_written(report, loaded.arch, output=output, fmt=fmt.value, json_out=json_out, out=out, written=written, quiet=quiet)
    say_stale(outputs, quiet)


def _refuse_flag_mixes(
    *,
    evaluate: bool,
    data: Path | None,
    recalibrate: int,
    calibration_data: Path | None,
    out: Path | None,
    dry_run: bool,
    output: Path | None,
    distill_data: Path | None,
) -> None:
    """Flags that need, or exclude, one another: refused before the model is loaded."""
    if evaluate and data is None:
        raise UsageError("--eval needs --data (the images to audit).")
    if recalibrate and calibration_data is None:
        raise UsageError(
            "--recalibrate needs --calibration-data (unlabelled images to estimate statistics on, apart from the --data you "
            "evaluate on)."
        )
    if calibration_data is not None and not recalibrate:
        raise UsageError("--calibration-data is used by --recalibrate N: add --recalibrate, or drop --calibration-data.")
    if out is not None and not evaluate:
        raise UsageError("--out writes the before/after report of --eval: add --eval (and --data), or drop --out.")
    if dry_run and (output is not None or evaluate or recalibrate or distill_data is not None):
        raise UsageError("--dry-run only shows the plan: drop --output, --eval, --recalibrate and --distill, or drop --dry-run.")


def _show_dry_run(model: Any, config: PatchConfig, prep: Any) -> None:
    from shiftaudit.antialias.inspection import inspect_model
    from shiftaudit.report.terminal import inspection_table

    insp = inspect_model(model, prep.size, channels=prep.channels)
    plan = {s.name: s for s in patch_model(model, config).steps}  # a copy: shows the real placements
    console.print(inspection_table(insp, {"Patch": {n: s.action for n, s in plan.items()}}, width=console.width))
    n = sum(s.patched for s in plan.values())
    console.print(f"dry run: {n} of {len(plan)} strided layers would be patched; nothing was changed.")


def _show_patch(result: PatchResult, quiet: bool) -> None:
    if not quiet:
        console.print(steps_table(result))
        for note in result.notes:
            console.print(text(f"note: {note}", style="dim"), soft_wrap=True)
    if not result.patched:
        console.print("nothing to patch: the model has no strided layer the policy selects.", style="yellow")


def _recalibrate(
    report: PatchReport,
    original: Any,
    calibration: Any,
    source: Path | None,
    *,
    num_images: int,
    seed: int,
    device: Any,
    quiet: bool,
    control: bool,
) -> tuple[PatchReport, Any]:
    """Re-estimate the BatchNorm statistics after the first blur; with ``control``, also the same layers of a copy of
    the original (the control run of --eval), returned with the report."""
    import copy

    rec = recalibrate_batchnorm(
        report.patch.model, calibration, num_images=num_images, seed=seed, device=device, progress=RichProgress(enabled=not quiet)
    )
    if not quiet:
        console.print(
            Text(f"re-estimated {len(rec.layers)} BatchNorm layers (those after the first blur) on {rec.images} images"),
            soft_wrap=True,
        )
    if 0 < rec.images < SMALL_CALIBRATION:
        err_console.print(
            Text(
                f"warning: BatchNorm statistics re-estimated on only {rec.images} images (fewer than {SMALL_CALIBRATION}) are "
                "noisy; "
                "give more --calibration-data, or use --distill DIR instead."
            ),
            soft_wrap=True,
        )
    baseline = None
    if control and rec.layers:
        baseline = copy.deepcopy(original)
        recalibrate_batchnorm(baseline, calibration, num_images=num_images, seed=seed, layers=rec.layers, device=device)
        baseline.eval().cpu()
    return dataclasses.replace(report, recalibration=rec, calibration_data=str(source), calibration_seed=seed), baseline


def _distill(
    report: PatchReport,
    original: Any,
    images: Any,
    source: Path | None,
    *,
    steps: int,
    seconds: float,
    seed: int,
    lr: float,
    max_shift: int | None,
    device: Any,
    quiet: bool,
) -> PatchReport:
    from shiftaudit.antialias import distill

    d = distill(
        original,
        report.patch.model,
        images,
        steps=steps,
        seconds=seconds,
        seed=seed,
        lr=lr,
        max_shift=max_shift,
        device=device,
        progress=RichProgress(enabled=not quiet),
    )
    if not quiet:
        console.print(
            Text(
                f"distilled {d.steps} steps ({d.stopped_by} budget) in {sig(d.seconds)} s on {d.train_images} images; "
                f"top-1 agreement with the original on {d.heldout_images} held-out images: "
                f"{100 * d.agreement_before:.1f} % -> {100 * d.agreement_after:.1f} % as given, "
                f"{100 * d.shifted_agreement_before:.1f} % -> {100 * d.shifted_agreement_after:.1f} % shifted"
            ),
            soft_wrap=True,
        )
    return dataclasses.replace(report, distillation=d, distill_data=str(source))


def _agreement(report: PatchReport, original: Any, dataset: Any, *, device: Any) -> PatchReport:
    agree = top1_agreement(original, report.patch.model, dataset, device=device)
    report = dataclasses.replace(report, agreement=agree)
    report.patch.model.eval().cpu()
    original.eval().cpu()
    if report.agreement_too_low:
        err_console.print(
            Text(
                f"warning: the patched model agrees with the original on only {100 * agree:.1f} % of the --data images at "
                "zero shift "
                f"(below --min-agreement {100 * report.min_agreement:g} %); --distill DIR fine-tunes it to agree, on "
                "unlabelled images."
            ),
            soft_wrap=True,
        )
    return report


def _compare(
    report: PatchReport,
    loaded: Any,
    dataset: Any,
    control_model: Any,
    shape: tuple[int, ...],
    device: Any,
    audit_options: dict[str, Any],
) -> PatchReport:
    """Audit the original, the patched model (and the control), time them, and show them side by side."""
    from shiftaudit.report.terminal import comparison_table

    result = report.patch
    before = run_eval(loaded, dataset, **audit_options)
    after = run_eval(dataclasses.replace(loaded, model=result.model, patch_spec=result.spec), dataset, **audit_options)
    control = (
        None if control_model is None else run_eval(dataclasses.replace(loaded, model=control_model), dataset, **audit_options)
    )
    comparison = compare_patch(
        loaded.model, result, before, after, input_shape=shape, device=device, baseline_recalibrated=control
    )
    report = dataclasses.replace(report, comparison=comparison)
    if not audit_options.get("quiet"):  # --quiet: only the verdict and errors (the JSON and --out hold the tables)
        console.print(
            comparison_table(
                title=_comparison_title(comparison),
                results=[(n, r) for n, _, r in _runs(report, comparison)],
                width=console.width,
            )
        )
        console.print(latency_table(comparison.latency))
    noisy = latency_warning(comparison.latency)
    if noisy:
        err_console.print(Text(noisy, style="yellow"), soft_wrap=True)
    return report


def _runs(report: PatchReport, c: PatchComparison) -> list[tuple[str, str, Any]]:
    """(column name, --out sub-folder, audit) of each model compared."""
    config = report.patch.config
    name = f"Patched ({config.filter})" if config.method == "blurpool" else f"Patched (APS, {config.filter})"
    if report.distillation is not None:
        name = name[:-1] + ", distilled)"
    control = [] if c.baseline_recalibrated is None else [("Baseline recalibrated", RUN_FOLDERS[2], c.baseline_recalibrated)]
    return [("Baseline", RUN_FOLDERS[0], c.before), *control, (name, RUN_FOLDERS[1], c.after)]


def _comparison_title(comparison: PatchComparison) -> str:
    from shiftaudit.report.terminal import describe_shifts

    before = comparison.before
    return f"Before / after: {before.data.get('description', 'data')}; {describe_shifts(before)}"


def _write(
    report: PatchReport,
    loaded: Any,
    prep: Any,
    *,
    model: Path,
    output: Path | None,
    fmt: str,
    json_out: Path | None,
    out: Path | None,
    dataset: Any,
) -> list[Path]:
    """The report folder, the patched model and the JSON, together, once every step succeeded; returns the folder's files."""
    from shiftaudit.files import all_or_nothing, write_json_atomic

    written: list[Path] = []
    with all_or_nothing():
        if out is not None and report.comparison is not None:
            from shiftaudit.report.outputs import write_side_by_side_dir

            written = write_side_by_side_dir(
                _runs(report, report.comparison),
                out,
                title=f"shiftaudit patch: {Path(str(model)).name}, before / after",
                intro=_comparison_title(report.comparison),
                dataset=dataset,
            )
        if output is not None:
            import torch

            from shiftaudit.loading import save_model

            result = report.patch
            result.model.eval().cpu().to(memory_format=torch.contiguous_format)  # as it was before --eval ran it
            save_model(
                result.model,
                output,
                format=fmt,
                arch=loaded.arch,
                arch_kwargs=loaded.arch_kwargs,
                num_classes=loaded.num_classes,
                preprocessing=prep,
                class_names=loaded.class_names,
                patch_spec=result.spec,
                extra_metadata={
                    "recalibrated_images": report.recalibration.images if report.recalibration else 0,
                    "distill_steps": report.distillation.steps if report.distillation else 0,
                },
            )
        if json_out is not None:
            write_json_atomic(json_out, report.to_json())
    return written


def _say_written(
    report: PatchReport,
    arch: str | None,
    *,
    output: Path | None,
    fmt: str,
    json_out: Path | None,
    out: Path | None,
    written: list[Path],
    quiet: bool,
) -> None:
    if quiet:
        return
    if output is not None:
        console.print(rebuild_message(output, fmt, arch), soft_wrap=True)
    if json_out is not None and str(json_out) != "-":
        console.print(f"wrote {json_out}")
    if out is not None:
        console.print(text(f"wrote {len(written)} files to {out}: open {Path(out) / 'report.html'}"), soft_wrap=True)
