"""``shiftaudit patch MODEL``: blur before every subsampling, weights kept; save it and compare before/after."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from shiftaudit.cli import app
from shiftaudit.cli.choices import DataKind, Mode, ModelFormat, Pad, PatchMethod, Precision, ShiftMode, value
from shiftaudit.cli.common import check_outputs, console, err_console, handle_errors, json_to_stdout
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
from shiftaudit.cli.running import run_eval
from shiftaudit.report.terminal import sig

MethodOpt = Annotated[PatchMethod, typer.Option("--method", help="blurpool (blur, then subsample) or aps (adaptive polyphase sampling: keep the phase of largest norm; exactly invariant with --circular-conv --stem).")]
FilterOpt = Annotated[str | None, typer.Option("--filter", "-f", help="Blur filter from the paper's Table 1 (`shiftaudit filters` lists them). Default: tri3 for blurpool (post hoc it keeps more accuracy than binomial5; see docs/patching.md), none (delta) for aps.")]
PadOpt = Annotated[Pad | None, typer.Option("--pad", case_sensitive=False, help="Blur padding. Default: reflect for blurpool, circular for aps.")]


def steps_table(result: Any) -> Table:
    cfg = result.config
    what = f"{cfg.filter}, {cfg.pad} padding" if cfg.method == "blurpool" else f"APS, blur {cfg.filter}, {cfg.pad} padding"
    t = Table(title=f"Patch ({what})", title_justify="left", show_edge=False, pad_edge=False)
    for col in ("Layer", "Kind", "Rule", "Decision"):
        t.add_column(col)
    for s in result.steps:
        t.add_row(*(Text(c) for c in (s.name, s.kind, s.rule if s.patched else "-", s.action)), style=None if s.patched else "dim")
    return t


def latency_table(before: Any, after: Any, shape: tuple[int, ...], device: str) -> Table:
    """Median and IQR (:class:`~shiftaudit.antialias.LatencyStats`) of baseline and patched; plain floats are medians."""
    repeats = getattr(before, "repeats", None)
    over = f"median and IQR over {repeats} runs" if repeats else "median"
    t = Table(title=f"Forward latency, batch {shape[0]} of {shape[2]}x{shape[3]} on {device} ({over})", title_justify="left", show_edge=False, pad_edge=False)
    for col in ("Baseline", "Patched", "Overhead"):
        t.add_column(col, justify="right", no_wrap=True)

    def cell(v: Any) -> str:
        if hasattr(v, "median"):
            return f"{sig(v.median)} ms (IQR {sig(v.iqr)})"
        return f"{sig(v)} ms"

    b, a = getattr(before, "median", before), getattr(after, "median", after)
    t.add_row(cell(before), cell(after), f"{100 * (a / b - 1):+.1f} %")
    return t


def latency_warning(before: Any, after: Any) -> str | None:
    from shiftaudit.antialias import latency_too_noisy

    if not latency_too_noisy(before, after):
        return None
    return (f"warning: latency noise exceeds the difference (IQR {sig(before.iqr)} and {sig(after.iqr)} ms, medians "
            f"{sig(before.median)} and {sig(after.median)} ms): the overhead is not measurable on this machine now; rerun on a quiet machine.")


def rebuild_message(output: Path, fmt: str, arch: str | None) -> str:
    """What it takes to load the saved model again: true for every kind of architecture."""
    from shiftaudit.loading.architectures import kind_of

    if fmt == "torchscript":
        return f"wrote {output} (torchscript); `shiftaudit eval {output} --data ...` runs it with no other flags (a black box: no inspection)"
    if arch and kind_of(arch) == "factory":
        module = arch.partition(":")[0]
        if module != "shiftaudit" and not module.startswith("shiftaudit."):
            return (f"wrote {output} (safetensors); rebuild it with `shiftaudit eval {output} --arch {arch} --data ...` "
                    f"(the module {module} must be importable: run from its folder or set PYTHONPATH; its arguments, the patch "
                    f"and the preprocessing are stored in the file)")
    if arch and kind_of(arch) == "timm":
        return f"wrote {output} (safetensors); `shiftaudit eval {output} --data ...` rebuilds it with no other flags (timm must be installed)"
    return f"wrote {output} ({fmt}); `shiftaudit eval {output} --data ...` rebuilds it with no other flags"


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
    stem: Annotated[bool, typer.Option("--stem/--no-stem", help="Also blur the strided conv that reads the pixels (costs the most).")] = False,
    shortcuts: Annotated[bool, typer.Option("--shortcuts/--no-shortcuts", help="Blur before strided 1x1 shortcut convs.")] = True,
    only: Annotated[list[str] | None, typer.Option("--only", help="Patch only this layer (and what is under it); repeatable, globs allowed.")] = None,
    skip: Annotated[list[str] | None, typer.Option("--skip", help="Leave this layer alone; repeatable, globs allowed.")] = None,
    circular_conv: Annotated[bool, typer.Option("--circular-conv", help="Make every conv's zero padding circular (the paper's clean testbed).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would change and stop.")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Save the patched model here (.safetensors with metadata, or a TorchScript archive with --format torchscript).")] = None,
    fmt: Annotated[ModelFormat, typer.Option("--format", help="How -o saves the patched model.")] = ModelFormat.safetensors,
    recalibrate: Annotated[int, typer.Option("--recalibrate", min=0, help="Re-estimate the statistics of the BatchNorm layers after the first blur on this many --calibration-data images, drawn in a random order seeded by --seed (labels unused).")] = 0,
    calibration_data: Annotated[Path | None, typer.Option("--calibration-data", help="Images for --recalibrate (any data --data reads; labels ignored). Keep them apart from the --data you evaluate on.")] = None,
    distill_data: Annotated[Path | None, typer.Option("--distill", help="Fine-tune the patched model to agree with the original (label-free distillation, random circular shifts) on the images here (any data --data reads; labels ignored).")] = None,
    distill_steps: Annotated[int, typer.Option("--distill-steps", min=1, help="Distillation budget: optimiser steps (batches of 32).")] = 300,
    distill_seconds: Annotated[float, typer.Option("--distill-seconds", min=0.001, help="Distillation budget: seconds of training; it stops at whichever budget comes first.")] = 120.0,
    distill_lr: Annotated[float, typer.Option("--distill-lr", min=1e-9, help="Distillation learning rate (Adam, every parameter).")] = 1e-3,
    min_agreement: Annotated[float, typer.Option("--min-agreement", min=0.0, max=1.0, help="Warn when the patched model's top-1 agrees with the original's on fewer of the --data images (at zero shift) than this share.")] = 0.9,
    evaluate: Annotated[bool, typer.Option("--eval", help="Audit the original and the patched model on --data and compare them side by side.")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="With --eval: write the report folder `eval --out` writes for each model (sub-folders before/, after/, and baseline_recalibrated/ with --recalibrate) and report.html with them side by side.")] = None,
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
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the patch report (and the before/after audits with --eval) as JSON ('-' for stdout).")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Anti-alias MODEL: MaxPool -> MaxBlurPool, strided conv -> conv + BlurPool, AvgPool -> BlurPool, weights kept."""
    from shiftaudit.atomicio import all_or_nothing, write_json_atomic
    from shiftaudit.engine.runner import resolve_device
    from shiftaudit.errors import UsageError
    from shiftaudit.antialias.inspection import inspect_model
    from shiftaudit.antialias import SMALL_CALIBRATION, PatchConfig, compare_latency_stats, patch_model, recalibrate_batchnorm, top1_agreement
    from shiftaudit.report.terminal import comparison_table, describe_shifts, inspection_table
    from shiftaudit.cli.progress import RichProgress

    if evaluate and data is None:
        raise UsageError("--eval needs --data (the images to audit).")
    if recalibrate and calibration_data is None:
        raise UsageError("--recalibrate needs --calibration-data (unlabelled images to estimate statistics on, apart from the --data you evaluate on).")
    if calibration_data is not None and not recalibrate:
        raise UsageError("--calibration-data is used by --recalibrate N: add --recalibrate, or drop --calibration-data.")
    if out is not None and not evaluate:
        raise UsageError("--out writes the before/after report of --eval: add --eval (and --data), or drop --out.")
    if dry_run and (output is not None or evaluate or recalibrate or distill_data is not None):
        raise UsageError("--dry-run only shows the plan: drop --output, --eval, --recalibrate and --distill, or drop --dry-run.")
    config = PatchConfig(method=method.value, filter=filter_name, pad=value(pad) or ("circular" if method == PatchMethod.aps else "reflect"), stem=stem, shortcuts=shortcuts, circular_conv=circular_conv,
                         only=tuple(only or ()), skip=tuple(skip or ()))
    from shiftaudit.report.outputs import side_by_side_files

    check_outputs({"--output": output, "--json": json_out}, {"--out": (out, side_by_side_files(("before", "after", "baseline_recalibrated")))},
                  inputs=[model])
    json_to_stdout(json_out)
    loaded = load_model_from_cli(model, arch, num_classes, trust_pickle, arch_kwargs)
    if loaded.format == "torchscript":
        raise UsageError("A TorchScript archive cannot be patched: pass the weights (state dict or safetensors) with --arch.")
    prep = resolve_cli_preprocessing(loaded, value(preset), size, resize, mean, std, data)
    if output is not None and fmt == ModelFormat.safetensors and not loaded.arch:
        raise UsageError("Saving a patched model as safetensors needs its architecture: pass --arch, or use --format torchscript.")

    if dry_run:
        insp = inspect_model(loaded.model, prep.size, channels=prep.channels)
        plan = {s.name: s for s in patch_model(loaded.model, config).steps}  # a copy: shows the real placements
        console.print(inspection_table(insp, {"Patch": {n: s.action for n, s in plan.items()}}, width=console.width))
        n = sum(s.patched for s in plan.values())
        console.print(f"dry run: {n} of {len(plan)} strided layers would be patched; nothing was changed.")
        return

    result = patch_model(loaded.model, config)
    if not quiet:
        console.print(steps_table(result))
        for note in result.notes:
            console.print(Text(f"note: {note}", style="dim"), soft_wrap=True)
    if not result.patched:
        console.print("nothing to patch: the model has no strided layer the policy selects.", style="yellow")

    dataset = None
    if data is not None:
        dataset = load_dataset_from_cli(loaded, data, preset=value(preset), size=size, resize=resize, mean=mean, std=std,
                                        data_kind=data_kind.value, class_map=class_map, limit=limit, seed=seed, strict=strict, raw=raw,
                                        shift_mode=shift_mode.value if evaluate else "circular", max_shift=max_shift)
    def unlabelled(path: Path) -> Any:
        return load_dataset_from_cli(loaded, path, preset=value(preset), size=size, resize=resize, mean=mean, std=std, data_kind="auto",
                                     class_map=None, limit=None, seed=seed, strict=strict, raw=raw)

    calibration = unlabelled(calibration_data) if calibration_data is not None else None
    distill_set = unlabelled(distill_data) if distill_data is not None else None
    dev = resolve_device(device)
    report: dict[str, Any] = {"schema": "shiftaudit/patch-report", "schema_version": 1, "model": str(model), **result.to_json()}
    baseline_recal = None
    if recalibrate:
        import copy

        rec = recalibrate_batchnorm(result.model, calibration, num_images=recalibrate, seed=seed, device=dev, progress=RichProgress(enabled=not quiet))
        report["recalibrated_images"] = rec.images
        report["recalibration"] = {**rec.to_json(), "data": str(calibration_data), "seed": seed}
        if not quiet:
            console.print(Text(f"re-estimated {len(rec.layers)} BatchNorm layers (those after the first blur) on {rec.images} images"), soft_wrap=True)
        if 0 < rec.images < SMALL_CALIBRATION:
            err_console.print(Text(f"warning: BatchNorm statistics re-estimated on only {rec.images} images (fewer than {SMALL_CALIBRATION}) are noisy; "
                                   "give more --calibration-data, or use --distill DIR instead."), soft_wrap=True)
        if evaluate and rec.layers:  # the control: the same layers re-estimated on the unpatched model
            baseline_recal = copy.deepcopy(loaded.model)
            recalibrate_batchnorm(baseline_recal, calibration, num_images=recalibrate, seed=seed, layers=rec.layers, device=dev)
            baseline_recal.eval().cpu()
    if distill_set is not None:
        from shiftaudit.antialias import distill

        d = distill(loaded.model, result.model, distill_set, steps=distill_steps, seconds=distill_seconds, seed=seed, lr=distill_lr,
                    max_shift=max_shift, device=dev, progress=RichProgress(enabled=not quiet))
        report["distill"] = {**d.to_json(), "data": str(distill_data)}
        if not quiet:
            console.print(Text(f"distilled {d.steps} steps ({d.stopped_by} budget) in {sig(d.seconds)} s on {d.train_images} images; "
                               f"top-1 agreement with the original on {d.heldout_images} held-out images: "
                               f"{100 * d.agreement_before:.1f} % -> {100 * d.agreement_after:.1f} % as given, "
                               f"{100 * d.shifted_agreement_before:.1f} % -> {100 * d.shifted_agreement_after:.1f} % shifted"), soft_wrap=True)
    result.model.eval().cpu()
    loaded.model.eval().cpu()
    if dataset is not None and result.patched:
        agree = top1_agreement(loaded.model, result.model, dataset, device=dev)
        result.model.eval().cpu()
        loaded.model.eval().cpu()
        report["agreement"] = {"zero_shift_top1": agree, "threshold": min_agreement}
        if agree < min_agreement:
            err_console.print(Text(f"warning: the patched model agrees with the original on only {100 * agree:.1f} % of the --data images at zero shift "
                                   f"(below --min-agreement {100 * min_agreement:g} %); --distill DIR fine-tunes it to agree, on unlabelled images."), soft_wrap=True)

    if output is not None:
        report["output"] = str(output)
    if evaluate:
        import dataclasses

        kwargs = dict(thresholds=[], max_shift=max_shift, shift_step=shift_step, mode=mode.value, shift_mode=shift_mode.value, pairs=pairs, seed=seed,
                      device=device, precision=precision.value, batch_size=batch_size, workers=workers, quiet=quiet)
        before = run_eval(loaded, dataset, **kwargs)
        after = run_eval(dataclasses.replace(loaded, model=result.model, patch_spec=result.spec), dataset, **kwargs)
        control = run_eval(dataclasses.replace(loaded, model=baseline_recal), dataset, **kwargs) if baseline_recal is not None else None
        shape = (1, prep.channels, *prep.size)
        lat_before, lat_after = compare_latency_stats([loaded.model, result.model], shape, device=dev)
        title = f"Before / after: {before.data.get('description', 'data')}; {describe_shifts(before)}"
        patched_name = f"Patched ({config.filter})" if config.method == "blurpool" else f"Patched (APS, {config.filter})"
        if distill_set is not None:
            patched_name = patched_name[:-1] + ", distilled)"
        columns = [("Baseline", before)] + ([("Baseline recalibrated", control)] if control is not None else []) + [(patched_name, after)]
        console.print(comparison_table(title=title, results=columns, width=console.width))
        console.print(latency_table(lat_before, lat_after, shape, str(dev)))
        noisy = latency_warning(lat_before, lat_after)
        if noisy:
            err_console.print(Text(noisy, style="yellow"), soft_wrap=True)
        report["before"] = before.to_json()
        report["after"] = after.to_json()
        if control is not None:
            report["baseline_recalibrated"] = control.to_json()
        report["latency_ms"] = {"baseline": lat_before.median, "patched": lat_after.median, "input_shape": list(shape), "device": str(dev),
                                "repeats": lat_before.repeats, "spread": {"baseline": lat_before.to_json(), "patched": lat_after.to_json()},
                                "noise_exceeds_difference": noisy is not None}
    written: list[Path] = []
    with all_or_nothing():  # the patched model and the report are written together, after every step succeeded
        if out is not None:
            from shiftaudit.report.outputs import write_side_by_side_dir

            runs = [("Baseline", "before", before)] + ([("Baseline recalibrated", "baseline_recalibrated", control)] if control is not None else [])
            runs.append((patched_name, "after", after))
            written = write_side_by_side_dir(runs, out, title=f"shiftaudit patch: {Path(str(model)).name}, before / after",
                                             intro=title, dataset=dataset)
        if output is not None:
            import torch

            from shiftaudit.loading import save_model

            result.model.eval().cpu().to(memory_format=torch.contiguous_format)  # as it was before --eval ran it
            save_model(result.model, output, format=fmt.value, arch=loaded.arch, arch_kwargs=loaded.arch_kwargs, num_classes=loaded.num_classes, preprocessing=prep,
                       class_names=loaded.class_names, patch_spec=result.spec,
                       extra_metadata={"recalibrated_images": report.get("recalibrated_images", 0),
                                       "distill_steps": report.get("distill", {}).get("steps", 0)})
        if json_out is not None:
            write_json_atomic(json_out, report)
    if not quiet and output is not None:
        console.print(rebuild_message(output, fmt.value, loaded.arch), soft_wrap=True)
    if not quiet and json_out is not None and str(json_out) != "-":
        console.print(f"wrote {json_out}")
    if not quiet and out is not None:
        console.print(Text(f"wrote {len(written)} files to {out}: open {Path(out) / 'report.html'}"), soft_wrap=True)
