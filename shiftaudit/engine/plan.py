"""An audit plan: every decision of an audit, made once before the first forward pass.

:func:`plan_audit` takes an :class:`~shiftaudit.engine.config.AuditConfig`, a model and data, checks everything that
can be checked before any work (settings, device, shift set, metrics against labels and mode, gate thresholds, batch
memory) and decides: the shift set and mode, exhaustive or sampled, the metrics, the strategy (dense, polyphase or
early exit) and the batch geometry. The decisions are an :class:`AuditPlan` (frozen, JSON-serialisable: what
``--dry-run`` shows); the live objects they apply to (the model on its device, the data, the accumulators) travel
beside it in a :class:`PreparedAudit`, which :func:`shiftaudit.engine.runner.run_plan` executes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from shiftaudit.data import AuditDataset, load_data
from shiftaudit.engine import distributed
from shiftaudit.engine.backend_plan import BackendRequest, check_backend, plan_backend, runtime_device
from shiftaudit.engine.config import MODES, AuditConfig, resolve_device
from shiftaudit.engine.forward import BatchedForward, model_dtype
from shiftaudit.engine.observers import Observer
from shiftaudit.engine.strategies import compile_model, early_exit_strategy, try_polyphase
from shiftaudit.engine.threads import resolve_threads, using_threads
from shiftaudit.errors import DataError, UsageError
from shiftaudit.gating import refuse_trivial_thresholds, validate_thresholds
from shiftaudit.limits import MAX_BATCH_BYTES, gib
from shiftaudit.metrics import Metric, MetricContext, default_metrics
from shiftaudit.result import Backend
from shiftaudit.shifts.modes import check_shift_mode, get_shift_mode, input_geometry
from shiftaudit.shifts.sets import ShiftSet, default_shift_set

EXHAUSTIVE_LIMIT = 2048  # auto mode evaluates every shift when the set is at most this large


@dataclass(frozen=True)
class AuditPlan:
    """The decisions of an audit: what will run, on what, in which batches. Serialisable with :meth:`to_json`."""

    shifts: ShiftSet
    exhaustive: bool
    input_size: tuple[int, int]
    canvas_margin: int
    num_images: int
    labelled: bool
    metrics: tuple[str, ...]
    strategy: str
    compiled: bool
    device: str
    channels_last: bool
    precision: str
    device_batch: int
    image_batch: int
    slots_per_image: int
    pairs: int
    seed: int
    notes: tuple[str, ...] = ()
    sequential: bool = False  # the gate decides from random draws first; the planned audit runs only if it must
    preprocessing: dict[str, Any] | None = None  # resize, crop, mean, std of the data; None: tensors taken as input
    threads: int = 1  # CPU threads of the forward passes (shiftaudit.engine.threads)
    backend: Backend | None = None  # who runs the forward passes, when a runtime was asked for (backend_plan)

    @property
    def mode(self) -> str:
        return "exhaustive" if self.exhaustive else "sampled"

    @property
    def forward_rows(self) -> int:
        """Images x shifts the plan evaluates at most (early exit stops sooner)."""
        return self.num_images * self.slots_per_image

    def to_json(self) -> dict[str, Any]:
        return {
            "shifts": self.shifts.to_json(),
            "shift_mode": self.shifts.mode,
            "mode": self.mode,
            "input_size": list(self.input_size),
            "canvas_margin": self.canvas_margin,
            "num_images": self.num_images,
            "labelled": self.labelled,
            "metrics": list(self.metrics),
            "engine": self.strategy,
            "compile": self.compiled,
            "device": self.device,
            "channels_last": self.channels_last,
            "precision": self.precision,
            "device_batch": self.device_batch,
            "image_batch": self.image_batch,
            "slots_per_image": self.slots_per_image,
            "forward_rows": self.forward_rows,
            "pairs": self.pairs,
            "seed": self.seed,
            "sequential": self.sequential,
            "preprocessing": self.preprocessing,
            "threads": self.threads,
            **({"backend": self.backend.to_json()} if self.backend is not None else {}),
            "notes": list(self.notes),
        }


@dataclass
class PreparedAudit:
    """A plan with the live objects it applies to: the model on its device and the forward runner built for the
    chosen strategy, the data, the accumulators and observers, the process group under torchrun."""

    plan: AuditPlan
    config: AuditConfig
    model: nn.Module
    forward: BatchedForward
    dataset: Any
    metrics: list[Metric]
    observers: list[Observer]
    info: dict[str, Any]
    device: torch.device
    dist: Any = None
    notes: list[str] = field(default_factory=list)


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
    if mode not in MODES:
        raise UsageError(f"Unknown `mode` {mode!r}; use auto, exhaustive or sampled.")
    kind = get_shift_mode(shift_mode, "`shift_mode`")
    if shifts is None:
        if max_shift is not None:
            kind.check_max_shift(max_shift, size)
        shifts = default_shift_set(size, max_shift, shift_step, shift_mode)
    elif (shifts.height, shifts.width) != tuple(size):
        raise UsageError(f"The shift set is for {shifts.height}x{shifts.width} inputs but the data is {size[0]}x{size[1]}.")
    elif shifts.mode != shift_mode:
        raise UsageError(f"The shift set is a {shifts.mode} set but the audit asks for shift mode {shift_mode}.")
    elif not bool(((np.asarray(shifts.dh) == 0) & (np.asarray(shifts.dw) == 0)).any()):
        raise UsageError("The shift set lacks the zero shift (0, 0), where accuracy and every adversarial radius start.")
    exhaustive = mode == "exhaustive" or (mode == "auto" and len(shifts) <= EXHAUSTIVE_LIMIT)
    return shifts, exhaustive


def default_device_batch(device: torch.device, size: tuple[int, int]) -> int:
    """Images x shifts per forward pass: big enough to keep the device busy, bounded by activation memory.

    On the CPU moderate batches win: 32-64 rows at 32x32 ran faster than 256, and still do with the reused input
    buffer (VGG-13, 1 thread, CPU-time medians: 193 / 190 / 159 pairs/s at 32 / 64 / 256). The cause is glibc
    returning the activations' memory to the OS after each forward: with MALLOC_MMAP_THRESHOLD_/TRIM_THRESHOLD_/
    TOP_PAD_ raised, 64 and 256 both ran at ~228 (benchmarks/RESULTS.md). So the CPU budget stays 64 rows of 32x32.
    """
    pixels = size[0] * size[1]
    budget = (1024 if device.type == "cuda" else 64) * 32 * 32
    floor = 64 if device.type == "cuda" else 16
    return int(max(floor, min(2048, budget // max(pixels, 1))))


def check_batch_bytes(batch: int, channels: int, size: tuple[int, int]) -> None:
    """Refuse a --batch-size whose inputs alone would not fit any machine, before the first forward pass."""
    need = batch * channels * size[0] * size[1] * 4.0
    if need > MAX_BATCH_BYTES:
        raise UsageError(
            f"`batch_size` {batch} at {channels}x{size[0]}x{size[1]} needs {gib(need)} of input per forward pass, more "
            f"than the {gib(MAX_BATCH_BYTES)} allowed; use a smaller `batch_size`."
        )


def resolve_model(model: Any, info: dict[str, Any]) -> tuple[nn.Module, Any, dict[str, Any]]:
    """``(module, its preprocessing or None, model info)`` from a module, a LoadedModel or a checkpoint path."""
    preprocessing = None
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        from shiftaudit.loading import load_model  # local: loading imports antialias, whose workflow imports this module

        model = load_model(model)
    if hasattr(model, "model") and hasattr(model, "format") and not isinstance(model, nn.Module):
        loaded = model
        model, preprocessing = loaded.model, loaded.preprocessing
        info = {**loaded_info(loaded), **info}
    if not isinstance(model, nn.Module) and not isinstance(model, torch.jit.ScriptModule):
        raise UsageError(f"audit() needs a torch.nn.Module, got {type(model).__name__}.")
    return model, preprocessing, info


def _runs_outside_torch(model: Any) -> bool:
    """A model whose forward leaves torch (an ONNX graph run by onnxruntime): it has ``black_box`` and
    ``plan_settings``, and nothing that hooks, compiles or autocasts PyTorch modules applies to it."""
    return bool(getattr(model, "black_box", None)) and callable(getattr(model, "plan_settings", None))


def loaded_info(loaded: Any) -> dict[str, Any]:
    return {
        "source": str(loaded.source),
        "format": loaded.format,
        "arch": loaded.arch,
        "num_classes": loaded.num_classes,
        "parameters": loaded.parameter_count,
        "patch": loaded.patch_spec,
    }


def resolve_data(data: Any, preprocessing: Any, config: AuditConfig) -> Any:
    """An AuditDataset from a dataset, tensors in memory or a path (loaded with a crop canvas in crop mode)."""
    if not isinstance(data, AuditDataset):
        is_path = isinstance(data, str) or hasattr(data, "__fspath__")
        if is_path and preprocessing is None:
            raise UsageError("Pass the data through shiftaudit.load_data(path, preprocessing=...) to say how to preprocess it.")
        if is_path:
            mode = get_shift_mode(config.shift_mode, "`shift_mode`")
            margin = mode.canvas_margin(config.shifts, config.max_shift, preprocessing.size)
            data = load_data(data, preprocessing=preprocessing, canvas_margin=margin)
        else:  # tensors or a dataset in memory: taken as already preprocessed
            data = load_data(data, preprocessing=preprocessing, raw=True)
    if len(data) == 0:
        raise DataError("The data holds no images.")
    return data


def plan_audit(config: AuditConfig, model: Any, data: Any, model_info: dict[str, Any] | None = None) -> PreparedAudit:
    """Check everything and make every decision of the audit; no image passes through the model yet (but for the
    probes of the polyphase engine and of an inference runtime, which run the model on a few inputs)."""
    model, preprocessing, info = resolve_model(model, dict(model_info or {}))
    dev = _plan_device(config)
    dataset = resolve_data(data, preprocessing, config)
    notes: list[str] = []
    shifts, exhaustive, size, margin = _plan_geometry(config, dataset, notes)
    outside = _runs_outside_torch(model)
    if outside:  # an ONNX graph: it says which settings it takes, and runs on its own device
        dev = model.plan_settings(config, dev, int(getattr(dataset, "channels", 3)), size, notes)
    elif callable(getattr(model, "check_input", None)):  # a torch.export graph: exported for some sizes only
        model.check_input(int(getattr(dataset, "channels", 3)), size)
        notes.extend(model.notes)
    labelled = bool(dataset.has_labels)
    metrics = _plan_metrics(config, shifts, labelled, exhaustive, notes)
    _check_thresholds(config, labelled, exhaustive, shifts)
    observers = _plan_observers(config, model, dataset, shifts, size, exhaustive)
    dist = distributed.setup(dev)
    if dist is not None:
        dev = dist.device
        if observers:
            raise UsageError("Per-layer distances are not supported under torchrun yet; run `layers` in one process.")
    use_cl = config.channels_last if config.channels_last is not None else dev.type == "cuda"
    model = model.eval().to(dev)
    if use_cl:
        model = model.to(memory_format=torch.channels_last)
    device_batch = config.batch_size or default_device_batch(dev, size)
    check_batch_bytes(device_batch, int(getattr(dataset, "channels", 3)), size)
    threads = resolve_threads(config.threads)
    with using_threads(threads):
        strategy, forward = _plan_strategy(
            config, model, dataset, shifts, exhaustive, labelled, metrics, observers, dev, device_batch, use_cl, notes
        )
        slots = len(shifts) if exhaustive else 2 + 2 * config.pairs
        request = BackendRequest(config, model, dataset, strategy, dev, size, threads, len(dataset) * slots, _outside(model))
        backend = plan_backend(request, forward, notes)
    sequential = _plan_sequential(config, strategy, observers, dist is not None, len(dataset) * slots, notes)
    plan = AuditPlan(
        shifts=shifts,
        exhaustive=exhaustive,
        input_size=size,
        canvas_margin=margin,
        num_images=len(dataset),
        labelled=labelled,
        metrics=tuple(m.name for m in metrics),
        strategy=strategy,
        compiled=bool(config.compile) and not outside,
        device=dev.type,
        channels_last=bool(forward.channels_last),
        precision=config.precision,
        device_batch=device_batch,
        image_batch=_image_batch(strategy, device_batch, forward, slots),
        slots_per_image=slots,
        pairs=config.pairs,
        seed=config.seed,
        notes=tuple(notes),
        sequential=sequential,
        preprocessing=_preprocessing_json(dataset),
        threads=threads,
        backend=backend,
    )
    return PreparedAudit(plan, config, model, forward, dataset, metrics, observers, info, dev, dist, notes)


def _plan_device(config: AuditConfig) -> torch.device:
    """The settings checked on their own, and the device they run on."""
    config.check()
    check_backend(config)
    dev = runtime_device(config, resolve_device(config.device))
    if config.precision == "fp16" and dev.type == "cpu":
        raise UsageError("`precision` fp16 needs a CUDA device; on the CPU use fp32 or bf16.")
    return dev


def _outside(model: Any) -> str | None:
    """What runs a model that is not PyTorch (its ``black_box`` words), or None."""
    return str(model.black_box) if _runs_outside_torch(model) else None


def _preprocessing_json(dataset: Any) -> dict[str, Any] | None:
    prep = getattr(dataset, "preprocessing", None)
    return prep.to_json() if prep is not None and hasattr(prep, "to_json") else None


def _plan_geometry(config: AuditConfig, dataset: Any, notes: list[str]) -> tuple[ShiftSet, bool, tuple[int, int], int]:
    """The shift set, exhaustive or not, the model input size and the crop canvas margin."""
    size, margin = input_geometry(dataset, check_shift_mode(config.shift_mode), config.shifts, config.max_shift, notes)
    max_shift = margin if config.max_shift is None and margin else config.max_shift
    shifts, exhaustive = plan_shifts(
        size,
        shifts=config.shifts,
        max_shift=max_shift,
        shift_step=config.shift_step,
        mode=config.mode,
        shift_mode=config.shift_mode,
    )
    if not get_shift_mode(config.shift_mode).rolls and (config.layers or config.observers):
        raise UsageError(
            "Per-layer distances compare circularly shifted feature maps; `layers` needs `shift_mode` circular, not "
            f"{config.shift_mode}."
        )
    if config.mode == "auto" and not exhaustive:
        notes.append(
            f"{len(shifts)} shifts is too many to evaluate exhaustively: sampled mode (zero, one random shift and "
            f"{config.pairs} random pairs per image); variation, exact consistency, the adversarial curve and the accuracy "
            "map need --mode exhaustive or a smaller shift set"
        )
    return shifts, exhaustive, size, margin


def _plan_metrics(config: AuditConfig, shifts: ShiftSet, labelled: bool, exhaustive: bool, notes: list[str]) -> list[Metric]:
    if not labelled:
        notes.append(
            "unlabelled data: only the label-free metrics are reported (consistency, flip rate, change of the top-1 "
            "probability, and flip examples against the zero-shift prediction in exhaustive runs)"
        )
    if config.metrics is not None:
        metrics = list(config.metrics)
    else:
        metrics = default_metrics(MetricContext(shifts, labelled, exhaustive, notes))
    for m in metrics:
        if m.needs_labels and not labelled:
            raise UsageError(f"Metric {m.name} needs labelled data.")
        if m.needs_all_shifts and not exhaustive:
            raise UsageError(f"Metric {m.name} needs every shift evaluated (`mode` exhaustive).")
    return metrics


def _check_thresholds(config: AuditConfig, labelled: bool, exhaustive: bool, shifts: ShiftSet) -> None:
    if config.thresholds:
        refuse_trivial_thresholds(list(config.thresholds), len(shifts))
        validate_thresholds(list(config.thresholds), labelled=labelled, exhaustive=exhaustive, radii=shifts.radii)


SEQUENTIAL_METRICS = ("consistency", "accuracy", "adversarial", "variation")


def sequential_blocker(thresholds: list[Any], strategy: str, observers: list[Any], distributed: bool) -> str | None:
    """Why the sequential gate cannot run this plan (None when it can)."""
    if not thresholds:
        return "no gate threshold was given"
    unknown = sorted({t.metric for t in thresholds} - set(SEQUENTIAL_METRICS))
    if unknown:
        return f"no sequential estimate of {', '.join(unknown)}"
    if strategy == "polyphase":
        return "the polyphase engine evaluates every shift at once, for less than sampling would cost"
    if observers:
        return "per-layer distances need every shift"
    if distributed:
        return "it runs in one process (not under torchrun)"
    return None


SEQUENTIAL_MIN_ROWS = 1024  # below this many forward passes the exhaustive audit is as quick as any sampling


def _plan_sequential(
    config: AuditConfig, strategy: str, observers: list[Observer], distributed: bool, full_rows: int, notes: list[str]
) -> bool:
    """Whether the sequential gate runs first; when it was asked for and cannot, a note says why. Left to the plan
    (``sequential=None``), it is asked for when a verdict is all the audit gives: thresholds, and neither per-layer
    distances nor a resume file, which need the full audit."""
    asked = config.sequential
    if asked is None:
        asked = bool(config.thresholds) and config.layers is None and config.resume is None
    if not asked:
        return False
    why = sequential_blocker(list(config.thresholds), strategy, observers, distributed)
    if why is None and config.resume is not None:
        why = "--resume saves the progress of the full audit"
    if why is None and full_rows <= SEQUENTIAL_MIN_ROWS:
        why = f"the full audit needs only {full_rows} forward passes"
    if why is not None:
        notes.append(f"sequential gate not used ({why}); the full audit decides")
        return False
    return True


def _plan_observers(
    config: AuditConfig, model: nn.Module, dataset: Any, shifts: ShiftSet, size: tuple[int, int], exhaustive: bool
) -> list[Observer]:
    observers: list[Observer] = list(config.observers)
    flat = getattr(model, "flat_graph", None)
    if config.layers and flat:
        raise UsageError(
            f"Per-layer feature distances hook PyTorch modules, and the model is {flat}; run `layers` on its weights "
            "(state dict or safetensors)."
        )
    if config.layers:
        # local: metrics.layers imports antialias, whose workflow imports this module
        from shiftaudit.metrics.layers import FeatureDistance, select_layers

        if not exhaustive:
            raise UsageError(
                "Per-layer distances need every shift of the set evaluated: use `mode` exhaustive or a smaller shift set."
            )
        layers = config.layers if isinstance(config.layers, str) else list(config.layers)
        observers.append(FeatureDistance(select_layers(model, layers, size, getattr(dataset, "channels", 3)), shifts))
    return observers


def _plan_strategy(
    config: AuditConfig,
    model: nn.Module,
    dataset: Any,
    shifts: ShiftSet,
    exhaustive: bool,
    labelled: bool,
    metrics: list[Metric],
    observers: list[Observer],
    dev: torch.device,
    device_batch: int,
    use_cl: bool,
    notes: list[str],
) -> tuple[str, BatchedForward]:
    """Dense, polyphase or early exit (each falls back to dense with a note), optionally compiled; and the forward
    runner for it."""
    strategy, runner = "dense", model
    circular = get_shift_mode(shifts.mode).rolls  # polyphase and early exit are built on torch.roll shifts only
    if not circular and (config.polyphase or config.early_exit):
        notes.append(f"polyphase engine and adversary early exit work on circular shifts only: not used in {shifts.mode} mode")
    if config.polyphase is not False and circular:
        strategy, runner = try_polyphase(
            model, dataset, shifts, exhaustive, observers, config.polyphase, dev, model_dtype(model), notes
        )
    if strategy == "dense" and config.early_exit is not False and circular:
        strategy = early_exit_strategy(metrics, exhaustive, labelled, observers, config.early_exit, notes)
    eager = None
    if config.compile and not _runs_outside_torch(model):
        eager, runner = runner, compile_model(runner, notes)
        if runner is eager:
            eager = None
    return strategy, BatchedForward(runner, dev, config.precision, device_batch, use_cl, eager=eager)


def _image_batch(strategy: str, device_batch: int, forward: BatchedForward, slots: int) -> int:
    """Images per loader batch: early exit takes many (each chunk holds few shifts: failures stop early); polyphase
    as many as one forward's cost allows; dense enough images for one device batch of (image, shift) rows."""
    if strategy == "early-exit":
        return int(min(512, max(1, device_batch)))
    if strategy == "polyphase":
        return int(min(512, max(1, device_batch // int(getattr(forward.eager or forward.model, "cost", 1)))))
    return int(min(512, max(1, math.ceil(device_batch / slots))))
