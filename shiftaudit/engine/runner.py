"""Running an audit plan: batches of images through the planned strategy, every metric fed, one result.

:func:`audit` is the public entry point (config -> :func:`~shiftaudit.engine.plan.plan_audit` ->
:func:`run_plan`). For each batch of images :mod:`shiftaudit.engine.passes` lays out the (image, shift) pairs, builds
the shifted copies on the device in one gather and runs them through :mod:`shiftaudit.engine.forward`; every
accumulator gets the same :class:`~shiftaudit.metrics.ShiftBatch`, so no metric needs a pass of its own.

Two modes: *exhaustive* (every shift of the set for every image; all metrics) and *sampled* (the zero shift, one random
shift and k random pairs per image, the paper's ImageNet-scale protocol: 2 + 2k forwards per image).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from shiftaudit import __version__
from shiftaudit.data import make_loader
from shiftaudit.engine import distributed
from shiftaudit.engine.backends import RUNTIMES
from shiftaudit.engine.cache import PredictionCache
from shiftaudit.engine.config import AuditConfig
from shiftaudit.engine.forward import model_dtype
from shiftaudit.engine.observers import Observer, Progress
from shiftaudit.engine.packing import RowPacker
from shiftaudit.engine.passes import DrawPlan, dense_job, early_exit_batch, full_batch
from shiftaudit.engine.plan import PreparedAudit, plan_audit
from shiftaudit.engine.resume import ResumeState, resume_state, subset_loader
from shiftaudit.engine.sequential import Undecided, run_sequential
from shiftaudit.engine.threads import using_threads
from shiftaudit.errors import AuditInterrupted, ModelError, Terminated
from shiftaudit.gating import evaluate_gate, sequential_gate
from shiftaudit.metrics import Metric, ShiftBatch, ZeroShiftConfidence
from shiftaudit.metrics.entries import Flips, Proportion
from shiftaudit.metrics.layout import assemble
from shiftaudit.result import AuditResult

__all__ = ["audit", "run_plan", "Observer", "Progress", "LABEL_MISMATCH"]


def audit(
    model: Any,
    data: Any,
    *,
    progress: Progress | None = None,
    model_info: dict[str, Any] | None = None,
    observers: list[Observer] | None = None,
    metrics: list[Metric] | None = None,
    **settings: Any,
) -> AuditResult:
    """Audit ``model`` on ``data`` under shifts and return every metric from one pass.

    ``model``: an ``nn.Module`` (or a :class:`~shiftaudit.loading.LoadedModel`, or a checkpoint path).
    ``data``: a :class:`~shiftaudit.data.AuditDataset`, a dataset of ``(image, label)``, an ``(images, labels)``
    pair of tensors, or a path understood by :func:`shiftaudit.data.load_data`.
    Settings (:class:`~shiftaudit.engine.config.AuditConfig`): ``shifts``: the shift set; by default
    :func:`~shiftaudit.shifts.sets.default_shift_set` of the image size with ``max_shift``/``shift_step``
    overrides. ``mode``: ``auto`` (exhaustive when the set has at most 2048 shifts), ``exhaustive`` or ``sampled``.
    ``pairs``: random pairs per image for sampled consistency. ``seed``: the per-image random draws.
    ``shift_mode``: ``circular`` (Eq. 4), ``crop`` (crops of a larger canvas: a path is loaded with a canvas margin
    of the max shift; data in memory is taken as the canvas, the input being the canvas minus twice the margin) or
    ``subpixel`` (Fourier phase shifts, e.g. ``shift_step=0.5``); see :mod:`shiftaudit.shifts.modes`.
    ``device``, ``precision`` (fp32, bf16, fp16), ``batch_size`` (rows per forward), ``channels_last``,
    ``num_workers``. ``metrics``: accumulators instead of the registered defaults.
    ``layers``: ``"auto"``, ``"all"`` or module names: also measure per-layer equivariance/invariance distances
    over the shift set (needs exhaustive mode), reported under ``metrics["layers"]``.
    ``resume``: a state file saved as the audit goes; when it exists the audit continues from it, and the result
    equals an uninterrupted run's. The file is left in place (the CLI deletes it once the report is written).
    ``polyphase``: evaluate every circular shift at once in shift-and-stitch form (:mod:`shiftaudit.engine.polyphase`);
    ``None`` uses it for all-shift runs whenever the model allows it, ``False`` never. ``early_exit``: stop each
    image at its first misclassified shift; ``None`` does so when every metric asked for allows it (the adversarial
    curve and zero-shift accuracy). ``compile``: run the model through ``torch.compile`` (eager if that fails).
    ``pack_rows``: dense rows fill every device batch across image batches (:mod:`shiftaudit.engine.packing`);
    ``None`` packs on CUDA only, since it moves float metrics by rounding against the unpacked layout.
    ``thresholds``: gate thresholds, the mapping (``{"min_consistency": 0.95, "min_adv_accuracy": {2: 0.8}}``) or
    :class:`~shiftaudit.gating.Threshold` list that :func:`shiftaudit.gate` takes, checked against the plan before any
    work; the verdict is in ``result.gate``.
    Under ``torchrun`` the images are sharded over the processes and every process returns the merged result.
    Ctrl-C or SIGTERM raises :class:`~shiftaudit.errors.AuditInterrupted` (how far it got, where it was saved).
    """
    if metrics is not None:
        settings["metrics"] = tuple(metrics)
    settings["observers"] = tuple(observers or ())
    config = AuditConfig(**settings)
    return run_plan(plan_audit(config, model, data, model_info), progress)


@dataclass
class _Counters:
    images_done: int = 0
    nonfinite_images: int = 0
    rows_before: int = 0
    rows_reused: int = 0  # forward rows the sequential gate had run, taken from its cache instead of run again


def run_plan(prepared: PreparedAudit, progress: Progress | None = None) -> AuditResult:
    """Execute a prepared plan: every image through the model at its planned shifts, then the report; torch (and the
    runtime) on the plan's CPU threads, the caller's thread count restored after."""
    with using_threads(prepared.plan.threads):
        return _run_plan(prepared, progress)


def _run_plan(prepared: PreparedAudit, progress: Progress | None) -> AuditResult:
    plan = prepared.plan
    cache = None
    if plan.sequential:
        decided, cache = _run_sequential(prepared, progress)
        if decided is not None:
            return decided
    state = None
    if prepared.config.resume is not None:
        state = _resume(prepared)
    loader, total_images = _loader(prepared, state)
    counters = _Counters()
    if state is not None and state.resumed:
        # no note in the report: a resumed run's JSON must equal an uninterrupted one's (the CLI says it resumed)
        counters = _Counters(state.counters["images_done"], state.counters["nonfinite_images"], state.counters["rows"])
    for o in prepared.observers:
        o.attach(prepared.model)
    t0 = time.perf_counter()
    if progress is not None:
        progress.start(total_images, f"auditing {total_images} images x {plan.slots_per_image} shifts")
        if counters.images_done:
            progress.advance(counters.images_done)
    try:
        _run_batches(prepared, loader, state, counters, progress, cache)
    except BaseException as exc:
        _stopped(prepared, state, counters, total_images, exc)
        raise
    finally:
        for o in prepared.observers:
            o.detach()
        if progress is not None:
            progress.stop()
    elapsed = time.perf_counter() - t0
    if state is not None:
        state.save(prepared.metrics)
    if cache is not None:
        counters.rows_reused = cache.reused
    if cache is not None and cache.held:
        prepared.notes.append(
            f"the full audit reused {cache.reused:,} of the sequential gate's {cache.held:,} predictions and ran "
            f"{prepared.forward.rows:,} forward passes of its own"
        )
    return _result(prepared, counters, elapsed)


def _run_sequential(prepared: PreparedAudit, progress: Progress | None) -> tuple[AuditResult | None, PredictionCache | None]:
    """The sequential gate's result; or, when the full audit must decide, None (with a note saying why) and the
    gate's cache of predictions, for the full audit to reuse."""
    config = prepared.config
    try:
        outcome = run_sequential(prepared, progress, config.decision_error, config.sequential_budget)
    except Undecided as exc:
        prepared.notes.append(f"sequential gate {exc}; the full audit decided")
        prepared.forward.rows = 0  # the full audit's timing counts the forward rows it uses: run, or reused
        return None, exc.cache
    plan = prepared.plan
    settings = {**_settings(plan), "mode": "sequential", "engine": "sequential"}
    settings["sequential"] = {"decision_error": config.decision_error, "budget": config.sequential_budget}
    data = _data_info(prepared.dataset, plan, plan.num_images, 0)
    data["images_drawn"] = outcome.images_seen
    notes = list(prepared.notes) + list(dict.fromkeys(prepared.forward.notes))
    notes.append(
        f"sequential gate: decided after {outcome.rows:,} of the full audit's {outcome.exhaustive_rows:,} forward passes "
        f"({100 * outcome.rows / outcome.exhaustive_rows:.1f} %); the chance that a verdict differs from the full "
        f"audit's is at most {config.decision_error:g}"
    )
    result = AuditResult(
        metrics={"sequential": outcome.to_json()},
        per_image={},
        model=prepared.info or {"description": type(prepared.model).__name__},
        data=data,
        settings=settings,
        environment=_environment(prepared.device, plan),
        notes=list(getattr(prepared.dataset, "notes", []) or []) + notes,
        timing={
            "seconds": outcome.seconds,
            "forwards_per_s": outcome.rows / outcome.seconds if outcome.seconds > 0 else float("nan"),
            "forward_rows": float(outcome.rows),
            "forward_rows_full": float(outcome.exhaustive_rows),
        },
    )
    result.gate = sequential_gate(outcome.stats).to_json()
    return result, None


def _resume(prepared: PreparedAudit) -> ResumeState:
    plan, config = prepared.plan, prepared.config
    numeric = {
        "--mode": plan.mode,
        "--pairs": config.pairs,
        "--seed": config.seed,
        "--precision": config.precision,
        "--device": [plan.device, plan.channels_last],
        "--batch-size": plan.device_batch,
        "the engine (--no-polyphase, --compile)": [plan.strategy, plan.compiled],
    }
    if plan.backend is not None:  # absent for torch, so that a torch audit's state file is what it always was
        numeric["--backend"] = plan.backend.name
    assert config.resume is not None
    return resume_state(
        config.resume,
        prepared.model,
        prepared.info,
        prepared.dataset,
        plan.shifts,
        numeric,
        prepared.metrics,
        prepared.observers,
        prepared.dist,
    )


def _loader(prepared: PreparedAudit, state: ResumeState | None) -> tuple[Any, int]:
    """The batches this process audits (its torchrun shard, or the images a resumed run has left) and how many
    images the progress counts."""
    dataset, dist, image_batch = prepared.dataset, prepared.dist, prepared.plan.image_batch
    workers, pin = prepared.config.num_workers, prepared.device.type == "cuda"
    if dist is not None:
        loader = distributed.shard_loader(dataset, dist, batch_size=image_batch, num_workers=workers, pin_memory=pin)
        return loader, len(distributed.rank_indices(dataset, dist.rank, dist.world))
    if state is not None:
        return subset_loader(dataset, state.remaining(len(dataset)), image_batch, workers, pin), len(dataset)
    return make_loader(dataset, batch_size=image_batch, num_workers=workers, pin_memory=pin), len(dataset)


def _run_batches(
    prepared: PreparedAudit,
    loader: Any,
    state: ResumeState | None,
    counters: _Counters,
    progress: Progress | None,
    cache: PredictionCache | None = None,
) -> None:
    """Every image batch through the planned strategy, each finished batch into the metrics. ``cache``: the
    sequential gate's predictions, looked up before any (image, shift) pair is run."""
    plan, forward, dev = prepared.plan, prepared.forward, prepared.device
    shifts = plan.shifts
    off_dtype = torch.float64 if shifts.fractional else torch.long  # sub-pixel offsets are fractional
    dh_all = torch.as_tensor(shifts.dh, dtype=off_dtype, device=dev)
    dw_all = torch.as_tensor(shifts.dw, dtype=off_dtype, device=dev)
    draws = DrawPlan(seed=plan.seed, pairs=plan.pairs, num_shifts=len(shifts))
    dtype = _input_dtype(prepared)
    packer = RowPacker(forward, _carry_rows(prepared)) if plan.strategy == "dense" and not prepared.observers else None
    done: Iterable[tuple[ShiftBatch | None, int, np.ndarray]]
    with torch.inference_mode():
        for images, labels, ids in loader:
            ids_np = ids.numpy().astype(np.int64)
            x = images.to(dev, dtype=dtype, non_blocking=True)
            lab_dev = labels.to(dev, non_blocking=True) if plan.labelled else None
            if plan.strategy == "early-exit":
                assert lab_dev is not None
                batch, bad = early_exit_batch(
                    forward, x, lab_dev, labels.numpy().astype(np.int64), ids_np, shifts, dh_all, dw_all, plan.pairs, cache
                )
                done = [(batch, bad, ids_np)]
            elif packer is not None:  # rows may share device batches with the next image batch; results come in order
                job = dense_job(
                    forward, x, lab_dev, labels, ids_np, shifts, plan.exhaustive, draws, plan.pairs, dh_all, dw_all, cache
                )
                job.finish = _with_ids(job.finish, ids_np)
                done = packer.add(job)  # lazy: each result leaves the packer as it is delivered
            else:
                batch, bad = full_batch(
                    forward,
                    x,
                    lab_dev,
                    labels,
                    ids_np,
                    shifts,
                    plan.exhaustive,
                    draws,
                    plan.pairs,
                    dh_all,
                    dw_all,
                    prepared.observers,
                    polyphase=plan.strategy == "polyphase",
                )
                done = [(batch, bad, ids_np)]
            for item in done:
                _deliver(prepared, item, state, counters, progress, packer)
        for item in packer.flush() if packer is not None else ():
            _deliver(prepared, item, state, counters, progress, packer)


def _carry_rows(prepared: PreparedAudit) -> bool:
    """Whether dense rows may share device batches across image batches (see :mod:`shiftaudit.engine.packing`)."""
    wanted = prepared.config.pack_rows
    return prepared.device.type == "cuda" if wanted is None else bool(wanted)


def _with_ids(finish: Any, ids_np: np.ndarray) -> Any:
    """A job's result with the ids of its images, which the progress and the resume state need."""
    return lambda outputs: (*finish(outputs), ids_np)


def _deliver(
    prepared: PreparedAudit,
    item: tuple[ShiftBatch | None, int, np.ndarray],
    state: ResumeState | None,
    counters: _Counters,
    progress: Progress | None,
    packer: RowPacker | None,
) -> None:
    """One finished image batch into every metric, the resume state and the progress bar."""
    batch, bad, ids_np = item
    counters.nonfinite_images += bad
    if batch is not None:
        for m in prepared.metrics:
            m.update(batch)
    counters.images_done += len(ids_np)
    if state is not None:  # rows forwarded ahead for the next image batch are counted when it finishes
        ahead = packer.rows_ahead if packer is not None else 0
        state.record(
            ids_np,
            prepared.metrics,
            images_done=counters.images_done,
            nonfinite_images=counters.nonfinite_images,
            rows=counters.rows_before + prepared.forward.rows - ahead,
        )
    if progress is not None:
        progress.advance(len(ids_np))


def _input_dtype(prepared: PreparedAudit) -> torch.dtype:
    return model_dtype(prepared.model)


def _stopped(prepared: PreparedAudit, state: ResumeState | None, counters: _Counters, total: int, exc: BaseException) -> None:
    """An audit stopped by an exception: save whole batches for --resume; Ctrl-C/SIGTERM become AuditInterrupted."""
    if state is not None:  # whole batches only: the saved state is consistent, the run can continue from it
        state.save(prepared.metrics)
    if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, AuditInterrupted):
        raise AuditInterrupted(
            counters.images_done, total, str(state.path) if state is not None else None, terminated=isinstance(exc, Terminated)
        ) from exc
    if isinstance(exc, ModelError) and counters.images_done == 0:  # failed at once: maybe --size is below its stride
        from shiftaudit.antialias.inspection import input_too_small  # local: antialias (its workflow) imports this module

        plan = prepared.plan
        small = input_too_small(prepared.model, plan.input_size, int(getattr(prepared.dataset, "channels", 3)))
        if small is not None:
            raise small from None


def _result(prepared: PreparedAudit, counters: _Counters, elapsed: float) -> AuditResult:
    plan, dataset, metrics = prepared.plan, prepared.dataset, prepared.metrics
    notes = list(prepared.notes)
    images_done, nonfinite_images = counters.images_done, counters.nonfinite_images
    rows = counters.rows_before + prepared.forward.rows + counters.rows_reused
    if prepared.dist is not None:
        images_done, nonfinite_images, rows = distributed.merge(
            prepared.dist, metrics, dataset, images_done, nonfinite_images, rows
        )
    notes.extend(dict.fromkeys(prepared.forward.notes))
    if plan.strategy == "early-exit":
        full = images_done * len(plan.shifts)
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
    computed, per_image = assemble(metrics)
    _add_image_paths(dataset, computed, per_image)
    mismatch = label_mismatch_note(computed, metrics)
    if mismatch:
        notes.append(mismatch)
    for o in prepared.observers:
        computed[o.name] = o.compute()
    result = AuditResult(
        metrics=computed,
        per_image=per_image,
        model=prepared.info or {"description": type(prepared.model).__name__},
        data=_data_info(dataset, plan, images_done, nonfinite_images),
        settings=_settings(plan),
        environment=_environment(prepared.device, plan),
        notes=list(getattr(dataset, "notes", []) or []) + notes,
        timing=_timing(images_done, plan.slots_per_image, rows, elapsed),
    )
    if prepared.config.thresholds:
        result.gate = evaluate_gate(result, list(prepared.config.thresholds)).to_json()
    return result


def _settings(plan: Any) -> dict[str, Any]:
    return {
        "shifts": plan.shifts.to_json(),
        "shift_mode": plan.shifts.mode,
        "mode": plan.mode,
        "pairs": plan.pairs,
        "seed": plan.seed,
        "precision": plan.precision,
        "device_batch": plan.device_batch,
        "engine": plan.strategy,
        **({"backend": plan.backend.to_json()} if plan.backend is not None else {}),
    }


def _data_info(dataset: Any, plan: Any, images_done: int, nonfinite_images: int) -> dict[str, Any]:
    info = {
        "description": getattr(dataset, "description", type(dataset).__name__),
        "kind": getattr(dataset, "kind", "memory"),
        "num_images": images_done,
        "labelled": plan.labelled,
        "image_size": list(plan.input_size),
        "nonfinite_images": nonfinite_images,
    }
    prep = getattr(dataset, "preprocessing", None)
    if prep is not None and hasattr(prep, "to_json"):
        info["preprocessing"] = prep.to_json()
    return info


def _timing(images_done: int, slots: int, rows: int, elapsed: float) -> dict[str, float]:
    return {
        "seconds": elapsed,
        "images_per_s": images_done / elapsed if elapsed > 0 else float("nan"),
        "forwards_per_s": images_done * slots / elapsed if elapsed > 0 else float("nan"),
        "forward_rows": float(rows),
        "forward_rows_full": float(images_done * slots),
    }


def _add_image_paths(dataset: Any, computed: dict[str, Any], per_image: dict[str, list[Any]]) -> None:
    """For file data: each image's path relative to the data folder, per image and on each flip example, so users
    can find the photos that flip."""
    image_path = getattr(dataset, "image_path", None)
    if not callable(image_path):
        return
    ids = per_image.get("image_id")
    if ids and image_path(int(ids[0])) is not None:
        per_image["path"] = [image_path(int(i)) for i in ids]
    flips = computed.get("flip_examples")
    if isinstance(flips, Flips):
        examples = [replace(ex, path=image_path(ex.image_id)) for ex in flips.examples]
        computed["flip_examples"] = replace(flips, examples=examples)


LABEL_MISMATCH = "labels likely do not match the model's classes"
MISMATCH_ACCURACY = 0.05  # "near zero": far below any real model, yet above chance for a 1000-class model
MISMATCH_CONFIDENCE = 0.5


def label_mismatch_note(computed: dict[str, Any], metric_list: list[Metric]) -> str | None:
    """A warning note when accuracy is near zero while the model is confident: the labels, not the model, are wrong."""
    entry = computed.get("accuracy", {}).get("none")
    acc = entry.value if isinstance(entry, Proportion) else None
    conf = next((m.compute()["mean_top1"] for m in metric_list if isinstance(m, ZeroShiftConfidence)), None)
    if acc is None or conf is None or not (acc <= MISMATCH_ACCURACY and conf >= MISMATCH_CONFIDENCE):
        return None
    return (
        f"{LABEL_MISMATCH}: accuracy without shift is {100 * acc:.1f} % although the model's mean top-1 probability "
        f"is {100 * conf:.0f} %; check that the folders map to the model's class indices (--class-map, e.g. "
        "--class-map imagenet for WordNet-id folders)"
    )


def _environment(device: torch.device, plan: Any) -> dict[str, Any]:
    env = {
        "shiftaudit": __version__,
        "torch": torch.__version__.split("+")[0],
        "python": platform.python_version(),
        "device": device.type,
    }
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
    backend = getattr(plan, "backend", None)
    if backend is not None and backend.name in RUNTIMES:  # the runtime that ran the model, by its version
        env[backend.name] = RUNTIMES[backend.name].version()
    return env
