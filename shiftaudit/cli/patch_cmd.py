"""``shiftaudit patch MODEL``: blur before every subsampling, weights kept; save it and compare before/after."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from . import app
from .common import (
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
from ..report.terminal import sig
from .eval_cmd import QuietOpt

MethodOpt = Annotated[str, typer.Option("--method", help="blurpool (blur, then subsample) or aps (adaptive polyphase sampling: keep the phase of largest norm; exactly invariant with --circular-conv --stem).")]
FilterOpt = Annotated[str | None, typer.Option("--filter", "-f", help="Blur filter from the paper's Table 1 (`shiftaudit filters` lists them). Default: binomial5 for blurpool, none (delta) for aps.")]
PadOpt = Annotated[str | None, typer.Option("--pad", help="Blur padding: reflect, zero, circular or replicate. Default: reflect for blurpool, circular for aps.")]


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
    """Median and IQR (:class:`~shiftaudit.patching.LatencyStats`) of baseline and patched; plain floats are medians."""
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
    from ..patching import latency_too_noisy

    if not latency_too_noisy(before, after):
        return None
    return (f"warning: latency noise exceeds the difference (IQR {sig(before.iqr)} and {sig(after.iqr)} ms, medians "
            f"{sig(before.median)} and {sig(after.median)} ms): the overhead is not measurable on this machine now; rerun on a quiet machine.")


def rebuild_message(output: Path, fmt: str, arch: str | None) -> str:
    """What it takes to load the saved model again: true for every kind of architecture."""
    from ..loading.architectures import kind_of

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
    method: MethodOpt = "blurpool",
    filter_name: FilterOpt = None,
    pad: PadOpt = None,
    stem: Annotated[bool, typer.Option("--stem/--no-stem", help="Also blur the strided conv that reads the pixels (costs the most).")] = False,
    shortcuts: Annotated[bool, typer.Option("--shortcuts/--no-shortcuts", help="Blur before strided 1x1 shortcut convs.")] = True,
    only: Annotated[list[str] | None, typer.Option("--only", help="Patch only this layer (and what is under it); repeatable, globs allowed.")] = None,
    skip: Annotated[list[str] | None, typer.Option("--skip", help="Leave this layer alone; repeatable, globs allowed.")] = None,
    circular_conv: Annotated[bool, typer.Option("--circular-conv", help="Make every conv's zero padding circular (the paper's clean testbed).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would change and stop.")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Save the patched model here (.safetensors with metadata, or a TorchScript archive with --format torchscript).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="safetensors or torchscript.")] = "safetensors",
    recalibrate: Annotated[int, typer.Option("--recalibrate", min=0, help="Re-estimate BatchNorm statistics on this many --data images after patching (labels unused).")] = 0,
    evaluate: Annotated[bool, typer.Option("--eval", help="Audit the original and the patched model on --data and compare them side by side.")] = False,
    data: DataOpt = None,
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
    mode: ModeOpt = "auto",
    shift_mode: ShiftModeOpt = "circular",
    pairs: PairsOpt = 5,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    batch_size: BatchOpt = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the patch report (and the before/after audits with --eval) as JSON ('-' for stdout).")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Anti-alias MODEL: MaxPool -> MaxBlurPool, strided conv -> conv + BlurPool, AvgPool -> BlurPool, weights kept."""
    from ..atomicio import all_or_nothing, write_json_atomic
    from ..engine import resolve_device
    from ..errors import UsageError
    from ..inspection import inspect_model
    from ..patching import PatchConfig, compare_latency_stats, patch_model, recalibrate_batchnorm
    from ..report.terminal import comparison_table, describe_shifts, inspection_table
    from .eval_cmd import load_dataset_from_cli, run_eval
    from .progress import RichProgress

    if fmt not in ("safetensors", "torchscript"):
        raise UsageError(f"--format must be safetensors or torchscript, got {fmt!r}.")
    if (evaluate or recalibrate) and data is None:
        raise UsageError(f"{'--eval' if evaluate else '--recalibrate'} needs --data (the images to {'audit' if evaluate else 'estimate statistics on'}).")
    if dry_run and (output is not None or evaluate or recalibrate):
        raise UsageError("--dry-run only shows the plan: drop --output, --eval and --recalibrate, or drop --dry-run.")
    pad = pad or ("circular" if method == "aps" else "reflect")
    config = PatchConfig(method=method, filter=filter_name, pad=pad, stem=stem, shortcuts=shortcuts, circular_conv=circular_conv,
                         only=tuple(only or ()), skip=tuple(skip or ()))
    check_outputs({"--output": output, "--json": json_out}, inputs=[model])
    json_to_stdout(json_out)
    loaded = load_model_from_cli(model, arch, num_classes, trust_pickle, arch_kwargs)
    if loaded.format == "torchscript":
        raise UsageError("A TorchScript archive cannot be patched: pass the weights (state dict or safetensors) with --arch.")
    prep = resolve_cli_preprocessing(loaded, preset, size, resize, mean, std, data)
    if output is not None and fmt == "safetensors" and not loaded.arch:
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
        dataset = load_dataset_from_cli(loaded, data, preset=preset, size=size, resize=resize, mean=mean, std=std,
                                        data_kind=data_kind, class_map=class_map, limit=limit, seed=seed, strict=strict, raw=raw,
                                        shift_mode=shift_mode if evaluate else "circular", max_shift=max_shift)
    dev = resolve_device(device)
    report: dict[str, Any] = {"schema": "shiftaudit/patch-report", "schema_version": 1, "model": str(model), **result.to_json()}
    if recalibrate:
        used = recalibrate_batchnorm(result.model, dataset, num_images=recalibrate, device=dev, progress=RichProgress(enabled=not quiet))
        report["recalibrated_images"] = used
        if not quiet:
            console.print(f"re-estimated BatchNorm statistics on {used} images")
    result.model.eval().cpu()

    if output is not None:
        report["output"] = str(output)
    if evaluate:
        import dataclasses

        kwargs = dict(thresholds=[], max_shift=max_shift, shift_step=shift_step, mode=mode, shift_mode=shift_mode, pairs=pairs, seed=seed,
                      device=device, precision=precision, batch_size=batch_size, workers=workers, quiet=quiet)
        before = run_eval(loaded, dataset, **kwargs)
        after = run_eval(dataclasses.replace(loaded, model=result.model, patch_spec=result.spec), dataset, **kwargs)
        shape = (1, prep.channels, *prep.size)
        lat_before, lat_after = compare_latency_stats([loaded.model, result.model], shape, device=dev)
        title = f"Before / after: {before.data.get('description', 'data')}; {describe_shifts(before)}"
        console.print(comparison_table(title=title, results=[("Baseline", before), (f"Patched ({config.filter})" if config.method == "blurpool" else f"Patched (APS, {config.filter})", after)], width=console.width))
        console.print(latency_table(lat_before, lat_after, shape, str(dev)))
        noisy = latency_warning(lat_before, lat_after)
        if noisy:
            err_console.print(Text(noisy, style="yellow"), soft_wrap=True)
        report["before"] = before.to_json()
        report["after"] = after.to_json()
        report["latency_ms"] = {"baseline": lat_before.median, "patched": lat_after.median, "input_shape": list(shape), "device": str(dev),
                                "repeats": lat_before.repeats, "spread": {"baseline": lat_before.to_json(), "patched": lat_after.to_json()},
                                "noise_exceeds_difference": noisy is not None}
    with all_or_nothing():  # the patched model and the report are written together, after every step succeeded
        if output is not None:
            import torch

            from ..loading import save_model

            result.model.eval().cpu().to(memory_format=torch.contiguous_format)  # as it was before --eval ran it
            save_model(result.model, output, format=fmt, arch=loaded.arch, arch_kwargs=loaded.arch_kwargs, num_classes=loaded.num_classes, preprocessing=prep,
                       class_names=loaded.class_names, patch_spec=result.spec,
                       extra_metadata={"recalibrated_images": report.get("recalibrated_images", 0)})
        if json_out is not None:
            write_json_atomic(json_out, report)
    if not quiet and output is not None:
        console.print(rebuild_message(output, fmt, loaded.arch), soft_wrap=True)
    if not quiet and json_out is not None and str(json_out) != "-":
        console.print(f"wrote {json_out}")
