"""The audit engine: one pass over images x shifts feeds every metric.

For each batch of images the engine lays out the (image, shift) pairs it needs, builds the shifted copies on the
device with a single gather (:class:`~shiftaudit.shifts.ShiftBank`), runs the model on large flattened batches,
reduces each output to (prediction, P(label), top-1 probability) on the device, and hands one
:class:`~shiftaudit.metrics.ShiftBatch` to every accumulator. Nothing is ever computed twice and no metric needs a
pass of its own.

Two modes:
- *exhaustive*: every shift of the set for every image; gives all metrics (exact consistency, variation, the
  adversarial curve and the accuracy map) plus the random-draw metrics, read off the same outputs.
- *sampled*: only the zero shift, one random shift and k random pairs per image (the paper's ImageNet-scale
  protocol): accuracy, random-shift accuracy and sampled consistency, at 2 + 2k forwards per image.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from . import __version__, distributed
from .errors import DataError, ModelError, UsageError
from .metrics.stability import FlipRate, MeanAbsoluteChange
from .metrics import (
    AccuracyAtRandomShift,
    AccuracyAtZeroShift,
    AccuracyMap,
    AdversarialCurve,
    ExactConsistency,
    FlipExamples,
    Metric,
    SampledConsistency,
    ShiftBatch,
    Variation,
)
from .result import AuditResult
from .rng import STREAM_PAIRS, STREAM_RANDOM_SHIFT, uniform_integers
from .metrics.adversarial import radius_json
from .shiftmodes import check_shift_mode, crop_margin, input_geometry, make_bank
from .shifts import ShiftBank, ShiftSet, default_shift_set

EXHAUSTIVE_LIMIT = 2048  # auto mode evaluates every shift when the set is at most this large
PRECISIONS = ("fp32", "bf16", "fp16")


class Observer(Protocol):
    """Something that watches the same forward passes as the metrics (e.g. per-layer feature distances).

    The engine calls ``attach`` once, ``begin_batch`` with the flattened (image slot, shift index) layout of each
    image batch, then per device chunk ``begin_chunk``/``on_inputs``/``on_logits``/``end_chunk`` (or ``abort_chunk``
    when the chunk is retried after running out of memory), and ``detach`` at the end.
    """

    def attach(self, model: nn.Module) -> None: ...

    def detach(self) -> None: ...

    def begin_batch(self, flat_image: torch.Tensor, flat_shift: torch.Tensor, image_ids: np.ndarray) -> None: ...

    def begin_chunk(self, sl: slice) -> None: ...

    def on_inputs(self, x: torch.Tensor) -> None: ...

    def on_logits(self, logits: torch.Tensor) -> None: ...

    def end_chunk(self) -> None: ...

    def abort_chunk(self) -> None: ...

    def compute(self) -> dict[str, Any]: ...


class Progress(Protocol):
    """What the engine reports to: the CLI plugs a rich progress bar in, the API passes None."""

    def start(self, total: int, description: str) -> None: ...

    def advance(self, n: int) -> None: ...

    def stop(self) -> None: ...


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


@dataclass(frozen=True)
class DrawPlan:
    """The per-image random draws: one random shift and ``pairs`` random pairs, as indices into the shift set."""

    seed: int
    pairs: int
    num_shifts: int

    def random_shift(self, image_ids: np.ndarray) -> np.ndarray:
        return uniform_integers(self.seed, STREAM_RANDOM_SHIFT, image_ids, 1, self.num_shifts)[:, 0]

    def pair_shifts(self, image_ids: np.ndarray) -> np.ndarray:
        flat = uniform_integers(self.seed, STREAM_PAIRS, image_ids, 2 * self.pairs, self.num_shifts)
        return flat.reshape(len(image_ids), self.pairs, 2)


def model_dtype(model: nn.Module) -> torch.dtype:
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def as_logits(output: Any, batch: int) -> torch.Tensor:
    """The class scores in a model's output: a tensor, the first tensor of a tuple, or ``logits`` of a dict."""
    if isinstance(output, torch.Tensor):
        logits = output
    elif isinstance(output, dict) and isinstance(output.get("logits"), torch.Tensor):
        logits = output["logits"]
    elif hasattr(output, "logits") and isinstance(output.logits, torch.Tensor):
        logits = output.logits
    elif isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        logits = output[0]
    else:
        raise ModelError(f"The model returned {type(output).__name__}, not a tensor of class scores.")
    if logits.ndim == 4 and logits.shape[2] == 1 and logits.shape[3] == 1:
        logits = logits.flatten(1)
    if logits.ndim != 2 or logits.shape[0] != batch:
        raise ModelError(
            f"The model's output has shape {tuple(logits.shape)}; expected (batch, classes) = ({batch}, C) for a classifier."
        )
    return logits


# ---------------------------------------------------------------------------------------------------------------
# The pass
# ---------------------------------------------------------------------------------------------------------------


class _Forward:
    """Runs the model on flattened (image, shift) batches with AMP, channels_last and CUDA out-of-memory back-off."""

    def __init__(self, model: nn.Module, device: torch.device, precision: str, batch: int, channels_last: bool,
                 eager: nn.Module | None = None) -> None:
        self.model = model
        self.device = device
        self.batch = batch
        self.channels_last = channels_last
        self.notes: list[str] = []
        self.num_classes = 0
        self.rows = 0  # forward rows (image x shift pairs) evaluated so far
        self.eager = eager  # set when ``model`` is torch.compile'd: what to fall back to if compiling fails
        self.amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]

    def _call(self, x: torch.Tensor) -> Any:
        if self.eager is None:
            return self.model(x)
        try:
            return self.model(x)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - a compile failure must not cost the user the audit
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.notes.append(f"torch.compile failed ({first[:120]}); ran the model eagerly")
            self.model, self.eager = self.eager, None
            return self.model(x)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def run(
        self,
        make_inputs: Callable[[slice], torch.Tensor],
        total: int,
        labels: torch.Tensor | None,
        observers: tuple[Observer, ...] = (),
        fan_out: int = 1,
        cost: int | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """Returns per-row (pred, p_label, p_top, finite) for ``total`` inputs built by ``make_inputs(slice)``.

        Each input gives ``fan_out`` consecutive output rows (1 for a plain model; every shift of the set for the
        polyphase model), so ``labels`` and the results have ``total * fan_out`` rows. ``cost``: how many batch
        rows one input weighs in memory (``fan_out`` by default); the device batch is shared out by it.
        """
        cost = max(1, fan_out if cost is None else cost)
        rows = total * fan_out
        preds = torch.empty(rows, dtype=torch.long, device=self.device)
        p_label = torch.empty(rows, dtype=torch.float32, device=self.device)
        p_top = torch.empty(rows, dtype=torch.float32, device=self.device)
        finite = torch.empty(rows, dtype=torch.bool, device=self.device)
        start = 0
        while start < total:
            stop = min(total, start + max(1, self.batch // cost))
            sl = slice(start, stop)
            out_sl = slice(start * fan_out, stop * fan_out)
            try:
                for o in observers:
                    o.begin_chunk(sl)
                x = make_inputs(sl)
                for o in observers:
                    o.on_inputs(x)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with self._autocast():
                    try:
                        out = self._call(x)
                    except (ModelError, KeyboardInterrupt, torch.cuda.OutOfMemoryError):
                        raise
                    except Exception as exc:  # the user's model failed (a TypeError is its fault too, not ours)
                        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                        raise ModelError(f"The model failed on a batch of shape {tuple(x.shape)}: {first}") from None
                logits = as_logits(out, (stop - start) * fan_out).float()
                for o in observers:
                    o.on_logits(logits)
                    o.end_chunk()
            except torch.cuda.OutOfMemoryError:
                for o in observers:
                    o.abort_chunk()
                if self.batch <= 1 or (cost > 1 and stop - start <= 1):
                    raise ModelError("CUDA ran out of memory even with a batch of one image; use --device cpu.") from None
                self.batch = max(1, min(self.batch, (stop - start) * cost) // 2)
                self.notes.append(f"CUDA out of memory: device batch halved to {self.batch}")
                torch.cuda.empty_cache()
                continue
            except (ModelError, KeyboardInterrupt):
                raise
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ModelError(
                    f"The model failed on a batch of shape {tuple(x.shape) if 'x' in locals() else '?'}: {first}"
                ) from None
            self.num_classes = int(logits.shape[1])
            self.rows += (stop - start) * fan_out
            ok = torch.isfinite(logits).all(dim=1)
            probs = torch.softmax(logits, dim=1)
            top, pred = probs.max(dim=1)
            sl = out_sl
            preds[sl] = pred
            p_top[sl] = top
            finite[sl] = ok
            if labels is not None:
                lab = labels[sl]
                if int(lab.max()) >= logits.shape[1]:
                    raise DataError(
                        f"Labels go up to {int(lab.max())} but the model has {logits.shape[1]} classes; "
                        "pass --class-map to map folder names to the model's class indices."
                    )
                p_label[sl] = probs.gather(1, lab.clamp(min=0).unsqueeze(1)).squeeze(1)
            start = stop
        return preds, p_label, p_top, finite


def _default_metrics(shift_set: ShiftSet, labelled: bool, exhaustive: bool) -> list[Metric]:
    metrics: list[Metric] = [SampledConsistency()]
    if labelled:
        metrics += [AccuracyAtZeroShift(), AccuracyAtRandomShift()]
    if exhaustive:
        metrics.append(ExactConsistency())
        if labelled:
            metrics += [Variation(), AdversarialCurve(shift_set), AccuracyMap(shift_set), FlipExamples(shift_set)]
        metrics.append(FlipRate(shift_set))
    metrics.append(MeanAbsoluteChange())
    return metrics


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
    mode). ``shift_mode``: circular, crop or subpixel (:mod:`shiftaudit.shiftmodes`)."""
    if mode not in ("auto", "exhaustive", "sampled"):
        raise UsageError(f"Unknown mode {mode!r}; use auto, exhaustive or sampled.")
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
# Strategies: dense (every pair through the model), polyphase (every shift at once), adversary early exit
# ---------------------------------------------------------------------------------------------------------------

POLYPHASE_TOLERANCE = 1e-3  # largest logit difference (relative to 1 + max |logit|) the probe accepts


def _try_polyphase(model: nn.Module, dataset: Any, shifts: ShiftSet, exhaustive: bool, observers: list[Observer],
                   wanted: bool | None, dev: torch.device, dtype: torch.dtype, notes: list[str]) -> tuple[str, nn.Module]:
    """The polyphase model when it applies and pays (auto: every H*W shift asked for); otherwise ("dense", model)."""
    auto = wanted is None
    if not exhaustive or observers or (auto and len(shifts) < shifts.height * shifts.width):
        if not auto:
            why = "per-layer distances watch each shifted input" if observers else "it needs exhaustive mode"
            notes.append(f"polyphase engine not used: {why}")
        return "dense", model
    from .polyphase import PolyphaseUnsupported, build_polyphase, probe

    gen = torch.Generator().manual_seed(0)  # a probe input: the check is about the model, not the data
    first = torch.randn((1, int(getattr(dataset, "channels", 3)), shifts.height, shifts.width), generator=gen)
    first = first.to(dev, dtype=dtype)
    try:
        with torch.inference_mode():
            poly = build_polyphase(model, first, shifts.dh, shifts.dw).to(dev)
            err = probe(model, poly, first, shifts.dh, shifts.dw)
    except PolyphaseUnsupported as exc:
        if not auto:
            notes.append(f"polyphase engine not applicable ({exc}); evaluated every shift separately")
        return "dense", model
    if not err <= POLYPHASE_TOLERANCE:
        notes.append(f"polyphase engine failed its check against direct forwards (error {err:.2g}); evaluated every shift separately")
        return "dense", model
    notes.append("polyphase engine: every circular shift of an image from one shift-and-stitch evaluation")
    return "polyphase", poly


def _early_exit_ok(metric: Metric) -> bool:
    """Metrics that only need the zero shift and each image's smallest misclassified shift."""
    return isinstance(metric, (AdversarialCurve, AccuracyAtZeroShift)) or bool(getattr(metric, "early_exit_safe", False))


def _early_exit_strategy(metric_list: list[Metric], exhaustive: bool, labelled: bool, observers: list[Observer],
                         wanted: bool | None, notes: list[str]) -> str:
    blockers = [m.name for m in metric_list if not _early_exit_ok(m)]
    ok = exhaustive and labelled and not observers and not blockers and any(isinstance(m, AdversarialCurve) for m in metric_list)
    if ok:
        return "early-exit"
    if wanted:
        why = ("it needs labelled data and exhaustive mode" if not (exhaustive and labelled) else
               "per-layer distances need every shift" if observers else
               f"{', '.join(blockers)} need every shift" if blockers else "no adversarial curve was asked for")
        notes.append(f"adversary early exit not used: {why}")
    return "dense"


def _compile(model: nn.Module, notes: list[str]) -> nn.Module:
    if not hasattr(torch, "compile"):
        notes.append("torch.compile is not available in this torch; ran the model eagerly")
        return model
    try:
        return torch.compile(model, dynamic=False)  # type: ignore[return-value]
    except Exception as exc:  # noqa: BLE001
        notes.append(f"torch.compile failed ({type(exc).__name__}); ran the model eagerly")
        return model


def _full_batch(forward: _Forward, x: torch.Tensor, lab_dev: torch.Tensor | None, labels: torch.Tensor,
                ids_np: np.ndarray, shifts: ShiftSet, exhaustive: bool, plan: DrawPlan, pairs: int,
                dh_all: torch.Tensor, dw_all: torch.Tensor, observers: list[Observer],
                polyphase: bool) -> tuple[ShiftBatch | None, int]:
    """Every planned (image, shift) pair of a batch through the model: the batch for the metrics, nonfinite count."""
    dev = x.device
    b = x.shape[0]
    rand = plan.random_shift(ids_np)
    pair = plan.pair_shifts(ids_np)
    if exhaustive:
        slot_shift = np.tile(np.arange(len(shifts)), (b, 1))
        zero_slot = np.full(b, shifts.zero_index)
        random_slot = rand
        pair_slots = pair
    else:
        slot_shift = np.concatenate([np.full((b, 1), shifts.zero_index), rand[:, None], pair.reshape(b, -1)], axis=1)
        zero_slot = np.zeros(b, dtype=np.int64)
        random_slot = np.ones(b, dtype=np.int64)
        pair_slots = (2 + np.arange(2 * pairs)).reshape(1, pairs, 2).repeat(b, 0)
    s = slot_shift.shape[1]
    flat_shift = torch.as_tensor(slot_shift.reshape(-1), device=dev)
    flat_image = torch.arange(b, device=dev).repeat_interleave(s)
    flat_labels = lab_dev[flat_image] if lab_dev is not None else None
    if polyphase:  # one input per image; the polyphase model returns its rows in shift-set order
        cost = int(getattr(forward.model, "cost", s))
        pred, p_lab, p_top, finite = forward.run(lambda sl: x[sl], b, flat_labels, (), fan_out=s, cost=cost)
    else:
        bank = make_bank(x, shifts)  # circular roll, crop window of the canvas, or Fourier sub-pixel shift

        def make_inputs(sl: slice) -> torch.Tensor:
            k = flat_shift[sl]
            return bank.gather(flat_image[sl], dh_all[k], dw_all[k])

        for o in observers:
            o.begin_batch(flat_image, flat_shift, ids_np)
        pred, p_lab, p_top, finite = forward.run(make_inputs, b * s, flat_labels, tuple(observers))
    labelled = lab_dev is not None
    pred_np = pred.view(b, s).cpu().numpy()
    p_top_np = p_top.view(b, s).cpu().numpy()
    p_lab_np = p_lab.view(b, s).cpu().numpy() if labelled else None
    ok_img = finite.view(b, s).all(dim=1).cpu().numpy()
    keep = np.flatnonzero(ok_img)
    bad = int(b - keep.size)
    if not keep.size:
        return None, bad
    return ShiftBatch(
        image_ids=ids_np[keep],
        labels=labels.numpy().astype(np.int64)[keep] if labelled else None,
        preds=pred_np[keep],
        p_label=p_lab_np[keep] if p_lab_np is not None else None,
        p_top=p_top_np[keep],
        shift_index=slot_shift[keep],
        zero_slot=zero_slot[keep],
        random_slot=random_slot[keep],
        pair_slots=pair_slots[keep],
        exhaustive=exhaustive,
        num_shifts=len(shifts),
        num_classes=forward.num_classes,
    ), bad


def _early_exit_batch(forward: _Forward, x: torch.Tensor, lab_dev: torch.Tensor, labels: np.ndarray,
                      ids_np: np.ndarray, shifts: ShiftSet, dh_all: torch.Tensor, dw_all: torch.Tensor,
                      pairs: int) -> tuple[ShiftBatch | None, int]:
    """Shifts in order of growing radius; an image leaves the batch at its first misclassified shift.

    The set is ordered by radius, so the first wrong column of a chunk is a smallest-radius failure and earlier
    chunks had none. Each chunk looks at most as far ahead as has been evaluated so far (at least 8 shifts), which
    bounds the work past an image's failure to about twice what it needed. The metrics get two slots per image: the
    zero shift and the first failure (the zero shift again for an image that never failed).
    """
    dev = x.device
    b, n_shifts = x.shape[0], len(shifts)
    bank = ShiftBank(x)
    fail = np.full(b, shifts.zero_index, dtype=np.int64)
    out = {k: np.zeros((b, 2), dtype=d) for k, d in (("pred", np.int64), ("p_lab", np.float32), ("p_top", np.float32))}
    nonfinite = np.zeros(b, dtype=bool)
    active = np.arange(b)
    pos = 0
    while active.size and pos < n_shifts:
        k = max(1, forward.batch // active.size)
        k = min(k, max(8, pos), n_shifts - pos)
        cols = np.arange(pos, pos + k)
        flat_image = torch.as_tensor(np.repeat(active, k), device=dev)
        flat_shift = torch.as_tensor(np.tile(cols, active.size), device=dev)

        def make_inputs(sl: slice, fi: torch.Tensor = flat_image, fs: torch.Tensor = flat_shift) -> torch.Tensor:
            return bank.gather(fi[sl], dh_all[fs[sl]], dw_all[fs[sl]])

        res = forward.run(make_inputs, active.size * k, lab_dev[flat_image])
        pred, p_lab, p_top, finite = (t.view(active.size, k).cpu().numpy() for t in res)
        if pos == 0:  # column 0 is the zero shift: every image's unshifted output
            out["pred"][active, 0] = out["pred"][active, 1] = pred[:, 0]
            out["p_lab"][active, 0] = out["p_lab"][active, 1] = p_lab[:, 0]
            out["p_top"][active, 0] = out["p_top"][active, 1] = p_top[:, 0]
        bad = ~finite.all(axis=1)
        nonfinite[active[bad]] = True
        wrong = pred != labels[active][:, None]
        failed = wrong.any(axis=1) & ~bad
        if failed.any():
            rows = np.flatnonzero(failed)
            col = wrong[rows].argmax(axis=1)
            img = active[rows]
            fail[img] = cols[col]
            out["pred"][img, 1] = pred[rows, col]
            out["p_lab"][img, 1] = p_lab[rows, col]
            out["p_top"][img, 1] = p_top[rows, col]
        active = active[~(failed | bad)]
        pos += k
    keep = np.flatnonzero(~nonfinite)
    if not keep.size:
        return None, int(b)
    n = keep.size
    return ShiftBatch(
        image_ids=ids_np[keep],
        labels=labels[keep],
        preds=out["pred"][keep],
        p_label=out["p_lab"][keep],
        p_top=out["p_top"][keep],
        shift_index=np.stack([np.full(n, shifts.zero_index), fail[keep]], axis=1),
        zero_slot=np.zeros(n, dtype=np.int64),
        random_slot=np.zeros(n, dtype=np.int64),
        pair_slots=np.zeros((n, pairs, 2), dtype=np.int64),
        exhaustive=True,
        num_shifts=n_shifts,
        num_classes=forward.num_classes,
    ), int(b - n)


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
    ``shifts``: the shift set; by default :func:`~shiftaudit.shifts.default_shift_set` of the image size with
    ``max_shift``/``shift_step`` overrides. ``mode``: ``auto`` (exhaustive when the set has at most
    2048 shifts), ``exhaustive`` or ``sampled``. ``pairs``: random pairs per image for sampled consistency.
    ``shift_mode``: ``circular`` (Eq. 4), ``crop`` (crops of a larger canvas: a path is loaded with a canvas margin
    of the max shift; data in memory is taken as the canvas, the input being the canvas minus twice the margin) or
    ``subpixel`` (Fourier phase shifts, e.g. ``shift_step=0.5``); see :mod:`shiftaudit.shiftmodes`.
    ``layers``: ``"auto"``, ``"all"`` or module names: also measure per-layer equivariance/invariance distances
    over the shift set (needs exhaustive mode), reported under ``metrics["layers"]``.
    ``resume``: a state file saved as the audit goes; when it exists the audit continues from it, and the result
    equals an uninterrupted run's. The file is left in place (the CLI deletes it once the report is written).
    ``polyphase``: evaluate every circular shift at once in shift-and-stitch form (:mod:`shiftaudit.polyphase`);
    ``None`` uses it for all-shift runs whenever the model allows it, ``False`` never. ``early_exit``: stop each
    image at its first misclassified shift; ``None`` does so when every metric asked for allows it (the adversarial
    curve and zero-shift accuracy). ``compile``: run the model through ``torch.compile`` (eager if that fails).
    Under ``torchrun`` the images are sharded over the processes and every process returns the merged result.
    """
    from .data import AuditDataset, load_data, make_loader

    notes: list[str] = []
    info: dict[str, Any] = dict(model_info or {})
    preprocessing = None
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        from .loading import load_model

        model = load_model(model)
    if hasattr(model, "model") and hasattr(model, "format") and not isinstance(model, nn.Module):
        loaded = model
        model = loaded.model
        preprocessing = loaded.preprocessing
        info = {**_loaded_info(loaded), **info}
    if not isinstance(model, nn.Module) and not isinstance(model, torch.jit.ScriptModule):
        raise UsageError(f"audit() needs a torch.nn.Module, got {type(model).__name__}.")
    if precision not in PRECISIONS:
        raise UsageError(f"Unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}.")
    if pairs < 1:
        raise UsageError(f"--pairs must be at least 1, got {pairs}.")
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
        notes.append("unlabelled data: only the label-free metrics are reported (consistency, flip rate, change of the top-1 probability)")
    metric_list = metrics if metrics is not None else _default_metrics(shifts, labelled, exhaustive)
    for m in metric_list:
        if m.needs_labels and not labelled:
            raise UsageError(f"Metric {m.name} needs labelled data.")
        if m.needs_all_shifts and not exhaustive:
            raise UsageError(f"Metric {m.name} needs every shift evaluated (--mode exhaustive).")

    observer_list: list[Observer] = list(observers or [])
    if layers:
        from .layers import FeatureDistance, select_layers

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
    off_dtype = torch.float64 if shifts.fractional else torch.long  # sub-pixel offsets are fractional
    dh_all = torch.as_tensor(shifts.dh, dtype=off_dtype, device=dev)
    dw_all = torch.as_tensor(shifts.dw, dtype=off_dtype, device=dev)

    strategy, runner = "dense", model
    circular = shifts.mode == "circular"  # polyphase and early exit are built on circular shifts only
    if not circular and (polyphase or early_exit):
        notes.append(f"polyphase engine and adversary early exit work on circular shifts only: not used in {shifts.mode} mode")
    if polyphase is not False and circular:
        strategy, runner = _try_polyphase(model, dataset, shifts, exhaustive, observer_list, polyphase, dev, dtype, notes)
    if strategy == "dense" and early_exit is not False and circular:
        strategy = _early_exit_strategy(metric_list, exhaustive, labelled, observer_list, early_exit, notes)
    eager = None
    if compile:
        eager, runner = runner, _compile(runner, notes)
        if runner is eager:
            eager = None
    forward = _Forward(runner, dev, precision, device_batch, use_cl, eager=eager)
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
        state = _resume_state(resume, model, info, dataset, shifts, exhaustive, pairs, seed, precision, metric_list,
                              observer_list, dist)
    if dist is not None:
        loader = distributed.shard_loader(dataset, dist, batch_size=image_batch, num_workers=num_workers, pin_memory=pin)
        total_images = len(distributed.shard_indices(len(dataset), dist.rank, dist.world))
    elif state is not None:
        loader = _subset_loader(dataset, state.remaining(len(dataset)), image_batch, num_workers, pin)
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
                    batch, bad = _early_exit_batch(forward, x, lab_dev, labels.numpy().astype(np.int64), ids_np,
                                                   shifts, dh_all, dw_all, pairs)
                else:
                    batch, bad = _full_batch(forward, x, lab_dev, labels, ids_np, shifts, exhaustive, plan, pairs,
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

    computed, per_image = _assemble(metric_list)
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


def _resume_state(path: str | Path, model: nn.Module, info: dict[str, Any], dataset: Any, shifts: ShiftSet,
                  exhaustive: bool, pairs: int, seed: int, precision: str, metric_list: list[Metric],
                  observers: list[Observer], dist: Any) -> Any:
    """The state file of a resumable run, with what it already holds loaded into the accumulators."""
    from .resume import ResumeState, fingerprint

    if observers:
        raise UsageError("--resume cannot be combined with --layers: per-layer distances are not saved as the audit goes.")
    if dist is not None:
        raise UsageError("--resume is for single-process runs; under torchrun, rerun the whole audit.")
    weights = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        weights.update(name.encode())
        weights.update(tensor.detach().float().cpu().numpy().tobytes())
    parts = {
        "weights": weights.hexdigest(),
        "model": {k: v for k, v in info.items() if k in ("arch", "num_classes", "patch")},
        "data": [getattr(dataset, "description", ""), len(dataset), list(getattr(dataset, "image_size", [])),
                 bool(getattr(dataset, "has_labels", False))],
        "shifts": shifts.to_json(),
        "exhaustive": exhaustive,
        "pairs": pairs,
        "seed": seed,
        "precision": precision,
    }
    state = ResumeState(path, fingerprint(parts))
    state.load_into(metric_list)
    return state


def _subset_loader(dataset: Any, indices: np.ndarray, batch_size: int, num_workers: int | None, pin: bool) -> Any:
    """The usual loader over some dataset positions (the images a resumed run still needs); ids stay positions."""
    from .data.dataset import AuditLoader, _Indexed, _worker_init, default_workers

    workers = default_workers(dataset, batch_size) if num_workers is None else int(num_workers)
    return AuditLoader(_Indexed(dataset), batch_size=batch_size, sampler=indices.tolist(), num_workers=workers,
                       pin_memory=pin, persistent_workers=False, worker_init_fn=_worker_init if workers else None)


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


def _assemble(metric_list: list[Metric]) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """Lay the accumulators' results out in the report schema."""
    by_name = {m.name: m for m in metric_list}
    out: dict[str, Any] = {}
    per_image: dict[str, list[Any]] = {}
    ids: np.ndarray | None = None

    def add_per_image(key: str, metric: Metric, cast: Callable[[float], Any]) -> None:
        nonlocal ids
        mids, values = metric.sorted_values()  # type: ignore[attr-defined]
        if ids is None:
            ids = mids
            per_image["image_id"] = [int(v) for v in mids]
        per_image[key] = [cast(v) for v in values]

    if "accuracy_none" in by_name or "accuracy_random" in by_name:
        out["accuracy"] = {}
        if "accuracy_none" in by_name:
            out["accuracy"]["none"] = by_name["accuracy_none"].compute()
            add_per_image("correct", by_name["accuracy_none"], lambda v: bool(v))
        if "accuracy_random" in by_name:
            out["accuracy"]["random"] = by_name["accuracy_random"].compute()
    cons: dict[str, Any] = {}
    if "consistency_sampled" in by_name:
        m = by_name["consistency_sampled"]
        cons["sampled"] = m.compute()
        add_per_image("sampled_agreement", m, float)
    if "consistency_exact" in by_name:
        m = by_name["consistency_exact"]
        cons["exact"] = m.compute()
        add_per_image("exact_consistency", m, float)
    if cons:
        out["consistency"] = cons
    if "variation" in by_name:
        out["variation"] = by_name["variation"].compute()
        add_per_image("variation", by_name["variation"], float)
    if "adversarial" in by_name:
        adv = by_name["adversarial"]
        out["adversarial"] = adv.compute()
        add_per_image("first_failure_radius", adv, radius_json)
    if "accuracy_map" in by_name:
        out["accuracy_map"] = by_name["accuracy_map"].compute()
    for m in metric_list:  # metrics added by callers go under their own name
        if m.name not in by_name or m.name in out:
            continue
        if m.name not in {
            "accuracy_none",
            "accuracy_random",
            "consistency_sampled",
            "consistency_exact",
            "variation",
            "adversarial",
            "accuracy_map",
        }:
            out[m.name] = m.compute()
    return out, per_image
