"""The whole patch job as one call: patch -> re-estimate BatchNorm statistics (and a control copy) -> distil ->
agreement -> before/after audits -> compare. ``shiftaudit patch``, ``shiftaudit demo --patch`` and Python users all
call :func:`patch_and_evaluate`; :func:`save_patched` writes the patched model with what the job did to it."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from shiftaudit.antialias.calibrate import recalibrate_batchnorm, top1_agreement
from shiftaudit.antialias.config import PatchConfig, PatchPlan
from shiftaudit.antialias.report import PatchReport, compare_patch
from shiftaudit.antialias.rewrite import patch_model
from shiftaudit.data.loader import default_workers
from shiftaudit.engine.config import AuditConfig, resolve_device
from shiftaudit.engine.observers import Progress
from shiftaudit.engine.plan import plan_audit
from shiftaudit.engine.runner import run_plan
from shiftaudit.errors import UsageError
from shiftaudit.training import TrainConfig, finetune

if TYPE_CHECKING:  # shiftaudit.loading imports the data package and torchvision: loaded when a job runs, not when the CLI starts
    from shiftaudit.loading import LoadedModel

UNPATCHABLE = {  # whole-model formats whose layers are a fixed graph, not modules to rewrite
    "torchscript": "A TorchScript archive",
    "pt2": "A torch.export archive (.pt2)",
    "onnx": "An ONNX model",
}

OnStep = Callable[[str, PatchReport], None]


def check_patchable(loaded: LoadedModel) -> None:
    """Refuse a model whose layers cannot be rewritten (a TorchScript, torch.export or ONNX graph)."""
    if loaded.format in UNPATCHABLE:
        raise UsageError(
            f"{UNPATCHABLE[loaded.format]} cannot be patched: patching rewrites the PyTorch modules, so it needs the PyTorch "
            "model; pass its weights (state dict or safetensors) with --arch."
        )


def patch_and_evaluate(
    model: LoadedModel | nn.Module,
    config: PatchConfig | PatchPlan | None = None,
    *,
    data: Any = None,
    evaluate: bool = True,
    settings: AuditConfig | None = None,
    calibration: Any = None,
    recalibrate: int = 512,
    control: bool = True,
    distill: Any = None,
    distill_steps: int | None = 300,
    distill_seconds: float | None = 120.0,
    distill_lr: float = 1e-3,
    train: TrainConfig | None = None,
    train_resume: str | Path | None = None,
    min_agreement: float = 0.9,
    input_shape: tuple[int, ...] | None = None,
    progress: Progress | None = None,
    on_step: OnStep | None = None,
) -> PatchReport:
    """Patch ``model`` (a :class:`~shiftaudit.loading.LoadedModel` or an ``nn.Module``; left untouched) by ``config`` (or a
    per-point :class:`~shiftaudit.antialias.config.PatchPlan`)
    and measure what the patch changed; returns the :class:`PatchReport` ``shiftaudit patch --json`` writes.

    ``calibration``: images whose first ``recalibrate`` (seeded draw) re-estimate the BatchNorm layers after the
    first blur; with ``control`` and ``evaluate``, the same layers of a copy of the original too (the "baseline
    recalibrated" audit, which separates what the blur buys from what fresh statistics buy). ``distill``: unlabelled
    images to fine-tune the patched model on towards the original: with the settings of ``train`` (a
    :class:`~shiftaudit.training.TrainConfig`; else budget ``distill_steps``/``distill_seconds``, learning rate
    ``distill_lr``), saving its state to ``train_resume`` as it goes and continuing from it. ``data``: the patched
    model's zero-shift top-1 agreement with the original on these images and, with ``evaluate``, the audits of both
    on them and their latencies on ``input_shape`` (default: one image of the audited size) in ``report.comparison``.
    ``settings``: the audits' :class:`~shiftaudit.engine.config.AuditConfig`; its ``device``, ``seed`` and
    ``max_shift`` also serve the re-estimation, the distillation and the agreement. ``on_step(name, report)`` is
    called after each step (``patch``, ``recalibrate``, ``distill``, ``agreement``, ``compare``) with the report so
    far, for a caller that shows progress as it goes.
    """
    from shiftaudit.loading import load_model  # local: loading imports antialias back (load, onnx_inspect)

    loaded = load_model(model) if isinstance(model, nn.Module) else model
    check_patchable(loaded)
    settings = settings or AuditConfig()
    device = resolve_device(settings.device)
    step = on_step or (lambda _name, _report: None)
    report = PatchReport(model=str(loaded.source), patch=patch_model(loaded.model, config), min_agreement=min_agreement)
    step("patch", report)
    control_model = None
    if calibration is not None and recalibrate:
        report, control_model = _recalibrate(
            report, loaded.model, calibration, recalibrate, settings.seed, device, progress, control and evaluate
        )
        step("recalibrate", report)
    if distill is not None:
        train_config = train or TrainConfig(
            steps=distill_steps, seconds=distill_seconds, lr=distill_lr, max_shift=settings.max_shift, seed=settings.seed
        )
        workers = settings.num_workers if settings.num_workers is not None else default_workers(distill, train_config.batch_size)
        d = finetune(
            loaded.model,
            report.patch.model,
            distill,
            train_config,
            device=device,
            resume=train_resume,
            num_workers=workers,
            progress=progress,
        )
        report = dataclasses.replace(report, distillation=d, distill_data=_name(distill))
        step("distill", report)
    report.patch.model.eval().cpu()
    loaded.model.eval().cpu()
    if data is not None and report.patch.patched:
        report = dataclasses.replace(report, agreement=top1_agreement(loaded.model, report.patch.model, data, device=device))
        report.patch.model.eval().cpu()
        loaded.model.eval().cpu()
        step("agreement", report)
    if data is not None and evaluate:
        report = _compare(report, loaded, data, control_model, settings, device, input_shape, progress)
        step("compare", report)
    return report


def _name(data: Any) -> str | None:
    """How the report names a set of images: the path it was read from, else its description."""
    return str(data) if isinstance(data, (str, Path)) else getattr(data, "description", None)


def _recalibrate(
    report: PatchReport,
    original: nn.Module,
    calibration: Any,
    num_images: int,
    seed: int,
    device: torch.device,
    progress: Progress | None,
    control: bool,
) -> tuple[PatchReport, nn.Module | None]:
    """Re-estimate the BatchNorm statistics after the first blur; with ``control``, also the same layers of a copy of
    the original, returned with the report."""
    rec = recalibrate_batchnorm(
        report.patch.model, calibration, num_images=num_images, seed=seed, device=device, progress=progress
    )
    baseline = None
    if control and rec.layers:
        baseline = copy.deepcopy(original)
        recalibrate_batchnorm(baseline, calibration, num_images=num_images, seed=seed, layers=rec.layers, device=device)
        baseline.eval().cpu()
    return dataclasses.replace(report, recalibration=rec, calibration_data=_name(calibration), calibration_seed=seed), baseline


def _compare(
    report: PatchReport,
    loaded: LoadedModel,
    data: Any,
    control_model: nn.Module | None,
    settings: AuditConfig,
    device: torch.device,
    input_shape: tuple[int, ...] | None,
    progress: Progress | None,
) -> PatchReport:
    """Audit the original, the patched model (and the control) alike, and time the first two; a copy that is still
    the original is not audited again: its audit would repeat the first, image for image."""
    patch = report.patch

    def audit(candidate: LoadedModel) -> Any:
        return run_plan(plan_audit(settings, candidate, data), progress)

    before = audit(loaded)
    if _unchanged(report):  # the same audit, recording the empty patch as the copy's own audit would
        after = dataclasses.replace(before, model={**before.model, "patch": patch.spec})
    else:
        after = audit(dataclasses.replace(loaded, model=patch.model, patch_spec=patch.spec))
    control = None if control_model is None else audit(dataclasses.replace(loaded, model=control_model))
    shape = input_shape or (1, int(getattr(data, "channels", 3)), *before.data["image_size"])
    comparison = compare_patch(
        loaded.model, patch, before, after, input_shape=tuple(shape), device=device, baseline_recalibrated=control
    )
    return dataclasses.replace(report, comparison=comparison)


def _unchanged(report: PatchReport) -> bool:
    """Whether the patched copy is the original still: no layer patched, no conv made circular, no BatchNorm layer
    re-estimated, not distilled."""
    rec = report.recalibration
    return (
        not report.patch.patched
        and not report.patch.config.circular_conv
        and not (rec is not None and rec.layers)
        and report.distillation is None
    )


def save_patched(
    report: PatchReport,
    loaded: LoadedModel,
    path: str | Path,
    *,
    format: str = "safetensors",
    preprocessing: Any = None,
) -> PatchReport:
    """Save the patched model of ``report`` (``loaded``: the original, for its architecture, classes and
    preprocessing) with the patch spec and what re-estimation and distillation did; returns the report naming the
    file."""
    from shiftaudit.loading import save_model  # local: loading imports antialias back

    patched = report.patch.model
    patched.eval().cpu().to(memory_format=torch.contiguous_format)  # as it was before the audits ran it
    save_model(
        patched,
        path,
        format=format,
        arch=loaded.arch,
        arch_kwargs=loaded.arch_kwargs,
        num_classes=loaded.num_classes,
        preprocessing=preprocessing if preprocessing is not None else loaded.preprocessing,
        class_names=loaded.class_names,
        patch_spec=report.patch.spec,
        extra_metadata={
            "recalibrated_images": report.recalibration.images if report.recalibration else 0,
            "distill_steps": report.distillation.steps if report.distillation else 0,
        },
    )
    return dataclasses.replace(report, output=str(path))
