"""The audit engine: one pass over images x shifts feeds every metric.

For each batch of images the engine lays out the (image, shift) pairs it needs, builds the shifted copies on the
device with a single gather (:class:`~shiftaudit.shifts.sets.ShiftBank`), runs the model on large flattened batches,
reduces each output to (prediction, P(label), top-1 probability) on the device, and hands one
:class:`~shiftaudit.metrics.ShiftBatch` to every accumulator. Nothing is ever computed twice and no metric needs a
pass of its own.

Two modes:
- *exhaustive*: every shift of the set for every image; gives all metrics (exact consistency, variation, the
  adversarial curve and the accuracy map) plus the random-draw metrics, read off the same outputs.
- *sampled*: only the zero shift, one random shift and k random pairs per image (the paper's ImageNet-scale
  protocol): accuracy, random-shift accuracy and sampled consistency, at 2 + 2k forwards per image.

Where the parts live: this module checks the arguments and runs the loop (:func:`audit`, :func:`plan_shifts`, the
default metrics, the device); :mod:`shiftaudit.engine.strategies` picks dense, polyphase or early exit;
:mod:`shiftaudit.engine.passes` lays out and evaluates each batch's (image, shift) pairs; :mod:`shiftaudit.engine.forward` runs the
model on them; :mod:`shiftaudit.metrics.layout` arranges the results in the report schema; :mod:`shiftaudit.engine.resume`
saves and restores a resumable run. :class:`Observer` and :class:`Progress` (:mod:`shiftaudit.engine.observers`) are
re-exported here.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shiftaudit import __version__
from shiftaudit.engine import distributed
from shiftaudit.errors import DataError, ModelError, UsageError
from shiftaudit.engine.forward import BatchedForward, model_dtype
from shiftaudit.limits import MAX_BATCH_BYTES, MAX_PAIRS, check_range, gib
from shiftaudit.metrics.stability import FlipRate, MeanAbsoluteChange
from shiftaudit.metrics import (
    AccuracyAtRandomShift,
    AccuracyAtZeroShift,
    AccuracyMap,
    AdversarialCurve,
    ExactConsistency,
    FlipExamples,
    Metric,
    SampledConsistency,
    Variation,
    ZeroShiftConfidence,
)
from shiftaudit.metrics.layout import assemble
from shiftaudit.engine.observers import Observer, Progress
from shiftaudit.engine.passes import DrawPlan, early_exit_batch, full_batch
from shiftaudit.result import AuditResult
from shiftaudit.engine.resume import resume_state, subset_loader
from shiftaudit.shifts.modes import check_shift_mode, crop_margin, input_geometry
from shiftaudit.shifts.sets import ShiftSet, default_shift_set
from shiftaudit.engine.strategies import compile_model, early_exit_strategy, try_polyphase

_Forward = BatchedForward  # the runner's name before it moved to shiftaudit.engine.forward (tests import it from here)

EXHAUSTIVE_LIMIT = 2048  # auto mode evaluates every shift when the set is at most this large
PRECISIONS = ("fp32", "bf16", "fp16")


# ---------------------------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------------------------


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"Unknown device {device!r}; use auto, cpu or cuda[:N].") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto.")
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"Device {device!r} is not supported; use auto, cpu or cuda[:N].")
    return dev


def default_device_batch(device: torch.device, size: tuple[int, int]) -> int:
    """Images x shifts per forward pass: big enough to keep the device busy, bounded by activation memory.

    On the CPU moderate batches win: 32-64 rows at 32x32 ran ~1.2-2x faster than 256 (cache-resident activations;
    benchmarks/RESULTS.md), so the CPU budget is 64 rows of 32x32.
    """
    pixels = size[0] * size[1]
    budget = (1024 if device.type == "cuda" else 64) * 32 * 32
    floor = 64 if device.type == "cuda" else 16
    return int(max(floor, min(2048, budget // max(pixels, 1))))


def _default_metrics(shift_set: ShiftSet, labelled: bool, exhaustive: bool, notes: list[str]) -> list[Metric]:
    metrics: list[Metric] = [SampledConsistency()]
    if labelled:
        metrics += [AccuracyAtZeroShift(), AccuracyAtRandomShift(), ZeroShiftConfidence()]
    if exhaustive:
        metrics.append(ExactConsistency())
        if labelled:
            metrics += [Variation(), AdversarialCurve(shift_set), AccuracyMap(shift_set), FlipExamples(shift_set)]
        else:  # no labels: the prediction at zero shift is the reference an image flips away from
            metrics.append(FlipExamples(shift_set, reference="prediction"))
        flip_rate = FlipRate(shift_set)
        if flip_rate.pairs.size:
            metrics.append(flip_rate)
        else:  # a grid with a step has no 1-px neighbours: omit the metric rather than report an empty mean (nan)
            notes.append(
                f"flip rate between 1-px neighbouring shifts not reported: no two shifts of the set are one pixel "
                f"apart (step {shift_set.step:g}); pass --shift-step 1 to measure it"
            )
    metrics.append(MeanAbsoluteChange())
    return metrics


def _add_image_paths(dataset: Any, computed: dict[str, Any], per_image: dict[str, list[Any]]) -> None:
    """For file data: each image's path relative to the data folder, per image and on each flip example, so users
    can find the photos that flip."""
    image_path = getattr(dataset, "image_path", None)
    if not callable(image_path):
        return
    ids = per_image.get("image_id")
    if ids and image_path(int(ids[0])) is not None:
        per_image["path"] = [image_path(int(i)) for i in ids]
    for ex in (computed.get("flip_examples") or {}).get("examples", []):
        path = image_path(int(ex["image_id"]))
        if path is not None:
            ex["path"] = path


LABEL_MISMATCH = "labels likely do not match the model's classes"
MISMATCH_ACCURACY = 0.05  # "near zero": far below any real model, yet above chance for a 1000-class model
MISMATCH_CONFIDENCE = 0.5


def label_mismatch_note(computed: dict[str, Any], metric_list: list[Metric]) -> str | None:
    """A warning note when accuracy is near zero while the model is confident: the labels, not the model, are wrong."""
    acc = computed.get("accuracy", {}).get("none", {}).get("value")
    conf = next((m.compute()["mean_top1"] for m in metric_list if isinstance(m, ZeroShiftConfidence)), None)
    if acc is None or conf is None or not (acc <= MISMATCH_ACCURACY and conf >= MISMATCH_CONFIDENCE):
        return None
    return (
        f"{LABEL_MISMATCH}: accuracy without shift is {100 * acc:.1f} % although the model's mean top-1 probability "
        f"is {100 * conf:.0f} %; check that the folders map to the model's class indices (--class-map, e.g. "
        "--class-map imagenet for WordNet-id folders)"
    )


def _environment(device: torch.device) -> dict[str, Any]:
    env = {
        "shiftaudit": __version__,
        "torch": torch.__version__.split("+")[0],
        "python": platform.python_version(),
        "device": device.type,
    }
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
    return env


def plan_shifts(
    size: tuple[int, int],
    *,
    shifts: ShiftSet | None = None,
    max_shift: int | None = None,
    shift_step: int | float | None = None,
    mode: str = "auto",
    shift_mode: str = "circular",
) -> tuple[ShiftSet, bool]:
    """The shift set for ``size`` (the model input size) and whether every shift of it will be evaluated (exhaustive
    mode). ``shift_mode``: circular, crop or subpixel (:mod:`shiftaudit.shifts.modes`)."""
    if mode not in ("auto", "exhaustive", "sampled"):
        raise UsageError(f"Unknown --mode {mode!r}; use auto, exhaustive or sampled.")
    check_shift_mode(shift_mode)
    if shifts is None:
        half = max(size) // 2
        if max_shift is not None and max_shift > half and shift_mode != "crop":
            raise UsageError(
                f"--max-shift {max_shift} is more than half the {size[0]}x{size[1]} input: every circular shift is "
                f"already within {half} px; use --max-shift {half} or less."
            )
        shifts = default_shift_set(size, max_shift, shift_step, shift_mode)
    elif (shifts.height, shifts.width) != tuple(size):
        raise UsageError(f"The shift set is for {shifts.height}x{shifts.width} inputs but the data is {size[0]}x{size[1]}.")
    elif shifts.mode != shift_mode:
        raise UsageError(f"The shift set is a {shifts.mode} set but the audit asks for shift mode {shift_mode}.")
    exhaustive = mode == "exhaustive" or (mode == "auto" and len(shifts) <= EXHAUSTIVE_LIMIT)
    return shifts, exhaustive


# ---------------------------------------------------------------------------------------------------------------
# The audit
# ---------------------------------------------------------------------------------------------------------------


def audit(
    model: Any,
    data: Any,
    *,
    shifts: ShiftSet | None = None,
    max_shift: int | None = None,
    shift_step: int | float | None = None,
    mode: str = "auto",
    shift_mode: str = "circular",
    pairs: int = 5,
    seed: int = 0,
    device: str | torch.device | None = "auto",
    precision: str = "fp32",
    batch_size: int | None = None,
    channels_last: bool | None = None,
    num_workers: int | None = None,
    progress: Progress | None = None,
    metrics: list[Metric] | None = None,
    model_info: dict[str, Any] | None = None,
    layers: str | list[str] | None = None,
    observers: list[Observer] | None = None,
    polyphase: bool | None = None,
    early_exit: bool | None = None,
    compile: bool = False,
    resume: str | Path | None = None,
) -> AuditResult:
    """Audit ``model`` on ``data`` under circular shifts and return every metric from one pass.

    ``model``: an ``nn.Module`` (or a :class:`~shiftaudit.loading.LoadedModel`, or a checkpoint path).
    ``data``: a :class:`~shiftaudit.data.AuditDataset`, a dataset of ``(image, label)``, an ``(images, labels)``
    pair of tensors, or a path understood by :func:`shiftaudit.data.load_data`.
    ``shifts``: the shift set; by default :func:`~shiftaudit.shifts.sets.default_shift_set` of the image size with
    ``max_shift``/``shift_step`` overrides. ``mode``: ``auto`` (exhaustive when the set has at most
    2048 shifts), ``exhaustive`` or ``sampled``. ``pairs``: random pairs per image for sampled consistency.
    ``shift_mode``: ``circular`` (Eq. 4), ``crop`` (crops of a larger canvas: a path is loaded with a canvas margin
    of the max shift; data in memory is taken as the canvas, the input being the canvas minus twice the margin) or
    ``subpixel`` (Fourier phase shifts, e.g. ``shift_step=0.5``); see :mod:`shiftaudit.shifts.modes`.
    ``layers``: ``"auto"``, ``"all"`` or module names: also measure per-layer equivariance/invariance distances
    over the shift set (needs exhaustive mode), reported under ``metrics["layers"]``.
    ``resume``: a state file saved as the audit goes; when it exists the audit continues from it, and the result
    equals an uninterrupted run's. The file is left in place (the CLI deletes it once the report is written).
    ``polyphase``: evaluate every circular shift at once in shift-and-stitch form (:mod:`shiftaudit.engine.polyphase`);
    ``None`` uses it for all-shift runs whenever the model allows it, ``False`` never. ``early_exit``: stop each
    image at its first misclassified shift; ``None`` does so when every metric asked for allows it (the adversarial
    curve and zero-shift accuracy). ``compile``: run the model through ``torch.compile`` (eager if that fails).
    Under ``torchrun`` the images are sharded over the processes and every process returns the merged result.
    """
    from shiftaudit.data import AuditDataset, load_data, make_loader

    notes: list[str] = []
    info: dict[str, Any] = dict(model_info or {})
    preprocessing = None
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        from shiftaudit.loading import load_model

        model = load_model(model)
    if hasattr(model, "model") and hasattr(model, "format") and not isinstance(model, nn.Module):
        loaded = model
        model = loaded.model
        preprocessing = loaded.preprocessing
        info = {**_loaded_info(loaded), **info}
    if not isinstance(model, nn.Module) and not isinstance(model, torch.jit.ScriptModule):
        raise UsageError(f"audit() needs a torch.nn.Module, got {type(model).__name__}.")
    if precision not in PRECISIONS:
        raise UsageError(f"Unknown --precision {precision!r}; use one of {', '.join(PRECISIONS)}.")
    if pairs < 1:
        raise UsageError(f"--pairs must be at least 1, got {pairs}.")
    check_range(pairs, "--pairs", 1, MAX_PAIRS, "sampled mode runs 2 + 2 x pairs forward passes per image")
    dev = resolve_device(device)
    if precision == "fp16" and dev.type == "cpu":
        raise UsageError("--precision fp16 needs a CUDA device; on the CPU use fp32 or bf16.")

    if not isinstance(data, AuditDataset):
        is_path = isinstance(data, str) or hasattr(data, "__fspath__")
        if is_path and preprocessing is None:
            raise UsageError("Pass the data through shiftaudit.load_data(path, preprocessing=...) to say how to preprocess it.")
        if is_path:
            margin = crop_margin(shift_mode, shifts, max_shift, preprocessing.size) if shift_mode == "crop" else None
            data = load_data(data, preprocessing=preprocessing, canvas_margin=margin)
        else:  # tensors or a dataset in memory: taken as already preprocessed
            data = load_data(data, preprocessing=preprocessing, raw=True)
    dataset = data
    if len(dataset) == 0:
        raise DataError("The data holds no images.")
    size, margin = input_geometry(dataset, check_shift_mode(shift_mode), shifts, max_shift, notes)  # crop: canvas - 2R
    shifts, exhaustive = plan_shifts(size, shifts=shifts, max_shift=margin if max_shift is None and margin else max_shift,
                                     shift_step=shift_step, mode=mode, shift_mode=shift_mode)
    if shift_mode != "circular" and (layers or observers):
        raise UsageError(f"Per-layer distances compare circularly shifted feature maps; --layers needs --shift-mode circular, not {shift_mode}.")
    if mode == "auto" and not exhaustive:
        notes.append(
            f"{len(shifts)} shifts is too many to evaluate exhaustively: sampled mode (zero, one random shift and "
            f"{pairs} random pairs per image); variation, exact consistency, the adversarial curve and the accuracy "
            "map need --mode exhaustive or a smaller shift set"
        )
    labelled = bool(dataset.has_labels)
    if not labelled:
        notes.append("unlabelled data: only the label-free metrics are reported (consistency, flip rate, change of the top-1 probability, and flip examples against the zero-shift prediction in exhaustive runs)")
    metric_list = metrics if metrics is not None else _default_metrics(shifts, labelled, exhaustive, notes)
    for m in metric_list:
        if m.needs_labels and not labelled:
            raise UsageError(f"Metric {m.name} needs labelled data.")
        if m.needs_all_shifts and not exhaustive:
            raise UsageError(f"Metric {m.name} needs every shift evaluated (--mode exhaustive).")

    observer_list: list[Observer] = list(observers or [])
    if layers:
        from shiftaudit.metrics.layers import FeatureDistance, select_layers

        if not exhaustive:
            raise UsageError("Per-layer distances need every shift of the set evaluated: use --mode exhaustive or a smaller shift set.")
        observer_list.append(FeatureDistance(select_layers(model, layers, size, getattr(dataset, "channels", 3)), shifts))
    dist = distributed.setup(dev)
    if dist is not None:
        dev = dist.device
        if observer_list:
            raise UsageError("Per-layer distances are not supported under torchrun yet; run --layers in one process.")
    dtype = model_dtype(model)
    use_cl = channels_last if channels_last is not None else dev.type == "cuda"
    model = model.eval().to(dev)
    if use_cl:
        model = model.to(memory_format=torch.channels_last)
    device_batch = batch_size or default_device_batch(dev, size)
    _check_batch_bytes(device_batch, int(getattr(dataset, "channels", 3)), size)
    off_dtype = torch.float64 if shifts.fractional else torch.long  # sub-pixel offsets are fractional
    dh_all = torch.as_tensor(shifts.dh, dtype=off_dtype, device=dev)
    dw_all = torch.as_tensor(shifts.dw, dtype=off_dtype, device=dev)

    strategy, runner = "dense", model
    circular = shifts.mode == "circular"  # polyphase and early exit are built on circular shifts only
    if not circular and (polyphase or early_exit):
        notes.append(f"polyphase engine and adversary early exit work on circular shifts only: not used in {shifts.mode} mode")
    if polyphase is not False and circular:
        strategy, runner = try_polyphase(model, dataset, shifts, exhaustive, observer_list, polyphase, dev, dtype, notes)
    if strategy == "dense" and early_exit is not False and circular:
        strategy = early_exit_strategy(metric_list, exhaustive, labelled, observer_list, early_exit, notes)
    eager = None
    if compile:
        eager, runner = runner, compile_model(runner, notes)
        if runner is eager:
            eager = None
    forward = BatchedForward(runner, dev, precision, device_batch, use_cl, eager=eager)
    plan = DrawPlan(seed=seed, pairs=pairs, num_shifts=len(shifts))
    slots_per_image = len(shifts) if exhaustive else 2 + 2 * pairs
    if strategy == "early-exit":  # many images at once, so each chunk can hold few shifts: failures stop early
        image_batch = int(min(512, max(1, device_batch)))
    elif strategy == "polyphase":
        image_batch = int(min(512, max(1, device_batch // int(getattr(eager or runner, "cost", 1)))))
    else:
        image_batch = int(min(512, max(1, math.ceil(device_batch / slots_per_image))))
    pin = dev.type == "cuda"
    state = None
    if resume is not None:
        numeric = {"--mode": "exhaustive" if exhaustive else "sampled", "--pairs": pairs, "--seed": seed,
                   "--precision": precision, "--device": [dev.type, bool(use_cl)], "--batch-size": device_batch,
                   "the engine (--no-polyphase, --compile)": [strategy, bool(compile)]}
        state = resume_state(resume, model, info, dataset, shifts, numeric, metric_list, observer_list, dist)
    if dist is not None:
        loader = distributed.shard_loader(dataset, dist, batch_size=image_batch, num_workers=num_workers, pin_memory=pin)
        total_images = len(distributed.shard_indices(len(dataset), dist.rank, dist.world))
    elif state is not None:
        loader = subset_loader(dataset, state.remaining(len(dataset)), image_batch, num_workers, pin)
        total_images = len(dataset)
    else:
        loader = make_loader(dataset, batch_size=image_batch, num_workers=num_workers, pin_memory=pin)
        total_images = len(dataset)

    nonfinite_images = 0
    images_done = 0
    rows_before = 0
    if state is not None and state.resumed:
        images_done = state.counters["images_done"]
        nonfinite_images = state.counters["nonfinite_images"]
        rows_before = state.counters["rows"]
        # no note in the report: a resumed run's JSON must equal an uninterrupted one's (the CLI says it resumed)
    for o in observer_list:
        o.attach(model)
    t0 = time.perf_counter()
    if progress is not None:
        progress.start(total_images, f"auditing {total_images} images x {slots_per_image} shifts")
        if images_done:
            progress.advance(images_done)
    try:
        with torch.inference_mode():
            for images, labels, ids in _batches(loader):
                ids_np = ids.numpy().astype(np.int64)
                b = images.shape[0]
                x = images.to(dev, dtype=dtype, non_blocking=True)
                lab_dev = labels.to(dev, non_blocking=True) if labelled else None
                if strategy == "early-exit":
                    assert lab_dev is not None
                    batch, bad = early_exit_batch(forward, x, lab_dev, labels.numpy().astype(np.int64), ids_np,
                                                  shifts, dh_all, dw_all, pairs)
                else:
                    batch, bad = full_batch(forward, x, lab_dev, labels, ids_np, shifts, exhaustive, plan, pairs,
                                            dh_all, dw_all, observer_list, polyphase=strategy == "polyphase")
                nonfinite_images += bad
                if batch is not None:
                    for m in metric_list:
                        m.update(batch)
                images_done += b
                if state is not None:
                    state.record(ids_np, metric_list, images_done=images_done, nonfinite_images=nonfinite_images,
                                 rows=rows_before + forward.rows)
                if progress is not None:
                    progress.advance(b)
    except BaseException as exc:
        if state is not None:  # whole batches only: the saved state is consistent, the run can continue from it
            state.save(metric_list)
            exc.shiftaudit_resume = str(state.path)  # type: ignore[attr-defined]
        exc.shiftaudit_progress = (images_done, total_images)  # type: ignore[attr-defined]
        if isinstance(exc, ModelError) and images_done == 0:  # failed at once: maybe --size is below its stride
            from shiftaudit.antialias.inspection import input_too_small

            small = input_too_small(model, size, int(getattr(dataset, "channels", 3)))
            if small is not None:
                raise small from None
        raise
    finally:
        for o in observer_list:
            o.detach()
        if progress is not None:
            progress.stop()
    elapsed = time.perf_counter() - t0
    rows = rows_before + forward.rows
    if state is not None:
        state.save(metric_list)
    if dist is not None:
        images_done, nonfinite_images, rows = distributed.merge(dist, metric_list, dataset, images_done,
                                                                nonfinite_images, rows)
    notes.extend(dict.fromkeys(forward.notes))
    if strategy == "early-exit":
        full = images_done * len(shifts)
        notes.append(
            f"adversary early exit: each image stopped at its first misclassified shift; {rows} of {full} forward "
            f"passes evaluated ({100.0 * (1 - rows / full) if full else 0.0:.1f}% skipped)"
        )
    if nonfinite_images:
        notes.append(
            f"{nonfinite_images} of {images_done} images gave NaN or infinite outputs at some shift and were left "
            "out of every metric"
        )
    if nonfinite_images == images_done:
        raise ModelError("The model gave NaN or infinite outputs for every image; no metric can be computed.")

    computed, per_image = assemble(metric_list)
    _add_image_paths(dataset, computed, per_image)
    mismatch = label_mismatch_note(computed, metric_list)
    if mismatch:
        notes.append(mismatch)
    for o in observer_list:
        computed[o.name] = o.compute()
    settings = {
        "shifts": shifts.to_json(),
        "shift_mode": shifts.mode,
        "mode": "exhaustive" if exhaustive else "sampled",
        "pairs": pairs,
        "seed": seed,
        "precision": precision,
        "device_batch": device_batch,
        "engine": strategy,
    }
    data_info = {
        "description": getattr(dataset, "description", type(dataset).__name__),
        "kind": getattr(dataset, "kind", "memory"),
        "num_images": images_done,
        "labelled": labelled,
        "image_size": list(size),
        "nonfinite_images": nonfinite_images,
    }
    prep = getattr(dataset, "preprocessing", None)
    if prep is not None and hasattr(prep, "to_json"):
        data_info["preprocessing"] = prep.to_json()
    data_notes = list(getattr(dataset, "notes", []) or [])
    return AuditResult(
        metrics=computed,
        per_image=per_image,
        model=info or {"description": type(model).__name__},
        data=data_info,
        settings=settings,
        environment=_environment(dev),
        notes=data_notes + notes,
        timing={
            "seconds": elapsed,
            "images_per_s": images_done / elapsed if elapsed > 0 else float("nan"),
            "forwards_per_s": images_done * slots_per_image / elapsed if elapsed > 0 else float("nan"),
            "forward_rows": float(rows),
            "forward_rows_full": float(images_done * slots_per_image),
        },
    )


def _check_batch_bytes(batch: int, channels: int, size: tuple[int, int]) -> None:
    """Refuse a --batch-size whose inputs alone would not fit any machine, before the first forward pass."""
    need = batch * channels * size[0] * size[1] * 4.0
    if need > MAX_BATCH_BYTES:
        raise UsageError(
            f"--batch-size {batch} at {channels}x{size[0]}x{size[1]} needs {gib(need)} of input per forward pass, more "
            f"than the {gib(MAX_BATCH_BYTES)} allowed; use a smaller --batch-size."
        )


def _batches(loader: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    yield from loader


def _loaded_info(loaded: Any) -> dict[str, Any]:
    return {
        "source": str(loaded.source),
        "format": loaded.format,
        "arch": loaded.arch,
        "num_classes": loaded.num_classes,
        "parameters": loaded.parameter_count,
        "patch": loaded.patch_spec,
    }
