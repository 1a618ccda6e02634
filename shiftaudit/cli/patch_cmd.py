"""``shiftaudit patch MODEL``: blur before every subsampling, weights kept; save it and compare before/after."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer

from shiftaudit.antialias import PatchConfig
from shiftaudit.antialias.methods import get_patch_method
from shiftaudit.antialias.workflow import check_patchable, patch_and_evaluate
from shiftaudit.cli import app
from shiftaudit.cli import options as opt
from shiftaudit.cli import patch_train as pt
from shiftaudit.cli.choices import (
    Augment,
    BackendChoice,
    BatchNormPolicy,
    DataKind,
    Mode,
    ModelFormat,
    Pad,
    PatchMethod,
    Precision,
    ShiftMode,
    value,
)
from shiftaudit.cli.common import check_outputs, handle_errors, json_to_stdout, say_stale
from shiftaudit.cli.loading import load_dataset_from_cli, load_model_from_cli, resolve_cli_preprocessing
from shiftaudit.cli.patch_search import SEARCH_FILES, SearchFlags, read_plan, run_search, warn_unrecalibrated
from shiftaudit.cli.patch_views import RUN_FOLDERS, PatchSteps, say_written, show_dry_run, write_outputs
from shiftaudit.cli.progress import RichProgress
from shiftaudit.engine.config import AuditConfig
from shiftaudit.engine.distributed import is_main_process
from shiftaudit.errors import UsageError
from shiftaudit.files import all_or_nothing
from shiftaudit.loading.saving import check_save_path
from shiftaudit.report.outputs import side_by_side_files

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
    model: opt.ModelArg,
    arch: opt.ArchOpt = None,
    arch_kwargs: opt.ArchKwargsOpt = None,
    num_classes: opt.NumClassesOpt = None,
    trust_pickle: opt.TrustPickleOpt = False,
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
    search: Annotated[
        bool,
        typer.Option(
            "--search",
            help="Measure per-layer plans (no change, blur with each --search-filter, APS; with and without --recalibrate) on "
            "--data, labels unused: zero-shift top-1 agreement with the original and consistency; choose the most consistent "
            "within --max-agreement-drop, show the frontier and stop (see docs/patching.md).",
        ),
    ] = False,
    max_agreement_drop: Annotated[
        float | None,
        typer.Option(
            "--max-agreement-drop",
            min=0.0,
            max=1.0,
            help="--search budget: the share of agreement the plan may lose (default 0.01).",
        ),
    ] = None,
    search_filters: Annotated[
        list[str] | None,
        typer.Option(
            "--search-filter", help="Blur filter --search tries at each layer; repeatable (default: tri3 and binomial5)."
        ),
    ] = None,
    plan_out: Annotated[
        Path | None, typer.Option("--plan-out", help="Write the plan --search chose here (JSON), for `patch --plan`.")
    ] = None,
    plan_in: Annotated[
        Path | None,
        typer.Option("--plan", help="Patch each layer as this plan says (written by --search --plan-out) instead of one method."),
    ] = None,
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
    finetune_data: pt.FinetuneOpt = None,
    train_steps: pt.StepsOpt = None,
    train_epochs: pt.EpochsOpt = None,
    train_seconds: pt.SecondsOpt = None,
    train_lr: pt.LrOpt = 1e-3,
    train_batch: pt.TrainBatchOpt = 32,
    accumulate: pt.AccumulateOpt = 1,
    warmup: pt.WarmupOpt = 0,
    cosine: pt.ScheduleOpt = True,
    weight_decay: pt.WeightDecayOpt = 0.0,
    ema: pt.EmaOpt = None,
    augment: pt.AugmentOpt = Augment.none,
    ce_weight: pt.CeWeightOpt = None,
    eval_every: pt.EvalEveryOpt = 50,
    patience: pt.PatienceOpt = None,
    train_bn: pt.TrainBnOpt = BatchNormPolicy.frozen,
    train_resume: pt.TrainResumeOpt = None,
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
    data: opt.DataOpt = None,
    data_kind: opt.DataKindOpt = DataKind.auto,
    class_map: opt.ClassMapOpt = None,
    preset: opt.PresetOpt = None,
    size: opt.SizeOpt = None,
    resize: opt.ResizeOpt = None,
    mean: opt.MeanOpt = None,
    std: opt.StdOpt = None,
    raw: opt.RawOpt = False,
    limit: opt.LimitOpt = None,
    seed: opt.SeedOpt = 0,
    strict: opt.StrictOpt = False,
    workers: opt.WorkersOpt = None,
    max_shift: opt.MaxShiftOpt = None,
    shift_step: opt.ShiftStepOpt = None,
    mode: opt.ModeOpt = Mode.auto,
    shift_mode: opt.ShiftModeOpt = ShiftMode.circular,
    pairs: opt.PairsOpt = 5,
    device: opt.DeviceOpt = "auto",
    precision: opt.PrecisionOpt = Precision.fp32,
    batch_size: opt.BatchOpt = None,
    backend: opt.BackendOpt = BackendChoice.torch,
    threads: opt.ThreadsOpt = None,
    json_out: Annotated[
        Path | None,
        typer.Option("--json", help="Write the patch report (and the before/after audits with --eval) as JSON ('-' for stdout)."),
    ] = None,
    quiet: opt.QuietOpt = False,
) -> None:
    """Anti-alias MODEL: MaxPool -> MaxBlurPool, strided conv -> conv + BlurPool, AvgPool -> BlurPool, weights kept."""
    search_flags = SearchFlags(search, max_agreement_drop, tuple(search_filters or ()), plan_out, plan_in, stem)
    one_config = method != PatchMethod.blurpool or bool(filter_name or pad or only or skip or circular_conv or not shortcuts)
    train = pt.TrainFlags(
        train_steps, train_epochs, train_seconds, train_lr, train_batch, accumulate, warmup, cosine, weight_decay, ema,
        augment.value, ce_weight, eval_every, patience, train_bn.value, train_resume,
    )  # fmt: skip
    train.check(distill=distill_data, finetune=finetune_data)
    train_path = distill_data or finetune_data
    search_flags.check(data=data, evaluate=evaluate, distill=train_path is not None, one_config=one_config)
    _refuse_flag_mixes(evaluate, data, recalibrate, calibration_data, out, dry_run and not search, output, train_path, search)
    plan_file = read_plan(plan_in) if plan_in else None
    config = plan_file.plan if plan_file else _patch_config(method, filter_name, pad, stem, shortcuts, circular_conv, only, skip)
    folder = SEARCH_FILES if search else side_by_side_files(RUN_FOLDERS)
    check_outputs(
        {"--output": output, "--json": json_out, "--plan-out": plan_out, "--resume": train_resume},
        {"--out": (out, folder)},
        inputs=[model, plan_in],
    )
    json_to_stdout(json_out)
    fmt = _save_format(output, fmt)
    loaded = load_model_from_cli(model, arch, num_classes, trust_pickle, arch_kwargs)
    check_patchable(loaded)
    prep = resolve_cli_preprocessing(loaded, value(preset), size, resize, mean, std, data)
    if output is not None and fmt == ModelFormat.safetensors and not loaded.arch:
        raise UsageError("Saving a patched model as safetensors needs its architecture: pass --arch, or save it as .pt2.")
    if dry_run and not search:
        return show_dry_run(loaded.model, config, prep)
    if plan_file is not None and plan_in is not None:
        warn_unrecalibrated(plan_in, plan_file, calibration_data)
    how: dict[str, Any] = dict(
        preset=value(preset), size=size, resize=resize, mean=mean, std=std, seed=seed, strict=strict, raw=raw,
        data_kind=data_kind.value, class_map=class_map, limit=limit, max_shift=max_shift,
        shift_mode=shift_mode.value if evaluate else "circular",
    )  # fmt: skip
    dataset, calibration, train_set = _datasets(loaded, how, data, calibration_data, train_path, finetune_data is not None)
    settings = _audits(
        max_shift, shift_step, mode, shift_mode, pairs, seed, device, precision, batch_size, workers, backend, threads
    )
    if search:
        to_write = dict(output=output, fmt=fmt.value, json_out=json_out, out=out)
        return run_search(
            loaded, prep, search_flags, data=dataset, calibration=calibration, recalibrate=recalibrate, settings=settings,
            dry_run=dry_run, outputs=to_write, quiet=quiet,
        )  # fmt: skip
    main = is_main_process()  # under torchrun every rank trains and audits alike; rank 0 alone speaks and writes
    report = patch_and_evaluate(
        loaded, config, data=dataset, evaluate=evaluate, settings=settings, calibration=calibration, recalibrate=recalibrate,
        distill=train_set, train_resume=train_resume,
        train=train.config(finetune=finetune_data is not None, max_shift=max_shift, seed=seed, precision=precision.value),
        min_agreement=min_agreement, input_shape=(1, prep.channels, *prep.size),
        progress=RichProgress(enabled=not quiet and main), on_step=PatchSteps(quiet or not main),
    )  # fmt: skip
    report = dataclasses.replace(report, calibration_data=_named(calibration_data), distill_data=_named(train_path))
    if not main:
        return None
    with all_or_nothing() as outputs:
        written = write_outputs(report, loaded, prep, output=output, fmt=fmt.value, json_out=json_out, out=out, dataset=dataset)
    if not quiet:
        say_written(output, fmt.value, loaded.arch, json_out=json_out, out=out, written=written)
    say_stale(outputs, quiet)


def _datasets(
    loaded: Any, how: dict[str, Any], data: Path | None, calibration: Path | None, train: Path | None, labelled_train: bool
) -> tuple[Any, Any, Any]:
    """The images to audit (--data, as flagged), to re-estimate on and to train on (labels read for --finetune only)."""
    unlabelled = dict(how, data_kind="auto", class_map=None, limit=None, shift_mode="circular", max_shift=None)
    for_training = dict(unlabelled, class_map=how["class_map"] if labelled_train else None)
    return tuple(
        None if path is None else load_dataset_from_cli(loaded, path, **flags)
        for path, flags in ((data, how), (calibration, unlabelled), (train, for_training))
    )  # type: ignore[return-value]


def _audits(
    max_shift: int | None,
    shift_step: float | None,
    mode: Mode,
    shift_mode: ShiftMode,
    pairs: int,
    seed: int,
    device: str,
    precision: Precision,
    batch_size: int | None,
    workers: int | None,
    backend: BackendChoice,
    threads: int | None,
) -> AuditConfig:
    """The audits' settings (the search's too), as ``eval`` takes them."""
    return AuditConfig(
        backend=backend.value,
        threads=threads,
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
    )


def _patch_config(
    method: PatchMethod,
    filter_name: str | None,
    pad: Pad | None,
    stem: bool,
    shortcuts: bool,
    circular_conv: bool,
    only: list[str] | None,
    skip: list[str] | None,
) -> PatchConfig:
    return PatchConfig(
        method=method.value,
        filter=filter_name,
        pad=value(pad) or get_patch_method(method.value).default_pad,
        stem=stem,
        shortcuts=shortcuts,
        circular_conv=circular_conv,
        only=tuple(only or ()),
        skip=tuple(skip or ()),
    )


def _named(path: Path | None) -> str | None:
    """The report names the images by the paths the command line gave."""
    return None if path is None else str(path)


def _save_format(output: Path | None, fmt: ModelFormat | None) -> ModelFormat:
    """How ``-o`` saves: ``--format``, else pt2 for a .pt2 name, else safetensors; a suffix naming another format is refused."""
    fmt = fmt or (ModelFormat.pt2 if output is not None and output.suffix.lower() == ".pt2" else ModelFormat.safetensors)
    if output is not None:
        check_save_path(output, fmt.value, flag="--output", format_flag="--format ")
    return fmt


def _refuse_flag_mixes(
    evaluate: bool,
    data: Path | None,
    recalibrate: int,
    calibration_data: Path | None,
    out: Path | None,
    dry_run: bool,
    output: Path | None,
    distill_data: Path | None,
    search: bool = False,
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
    if out is not None and not evaluate and not search:
        raise UsageError("--out writes the before/after report of --eval: add --eval (and --data), or drop --out.")
    if dry_run and (output is not None or evaluate or recalibrate or distill_data is not None):
        raise UsageError("--dry-run only shows the plan: drop --output, --eval, --recalibrate and --distill, or drop --dry-run.")
