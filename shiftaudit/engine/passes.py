"""One batch of images through the model as (image, shift) pairs, read back as one :class:`ShiftBatch`.

:func:`full_batch` lays out every planned pair (every shift of the set in exhaustive mode; the zero shift, one random
shift and the random pairs of a :class:`DrawPlan` in sampled mode) and runs it through the dense or the polyphase
model; :func:`dense_job` lays out the same dense rows as a job for the
:class:`~shiftaudit.engine.packing.RowPacker` (one reused input buffer, optionally rows shared across image batches),
which the runner uses for every dense run without per-layer observers. :func:`early_exit_batch` walks the shifts in
order of growing radius and drops each image at its first misclassified shift. All leave out images whose outputs
are not finite and return how many there were. Given the sequential gate's
:class:`~shiftaudit.engine.cache.PredictionCache`, the dense job and the early exit look every pair up there first
and run only the pairs it lacks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from shiftaudit.engine.cache import CachedRows, PredictionCache
from shiftaudit.engine.forward import BatchedForward
from shiftaudit.engine.observers import Observer
from shiftaudit.engine.packing import PackJob
from shiftaudit.metrics import ShiftBatch
from shiftaudit.rng import STREAM_PAIRS, STREAM_RANDOM_SHIFT, uniform_integers
from shiftaudit.shifts.modes import gather_into, make_bank
from shiftaudit.shifts.modes.circular import ShiftBank
from shiftaudit.shifts.sets import ShiftSet


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


@dataclass(frozen=True)
class Layout:
    """Where each (image, shift) pair of a batch sits: per-image slots (numpy) and the flat forward rows (device)."""

    slot_shift: np.ndarray  # (B, S) shift-set index held in each slot
    zero_slot: np.ndarray
    random_slot: np.ndarray
    pair_slots: np.ndarray
    flat_image: torch.Tensor  # (B*S,) image of each forward row, image-major
    flat_shift: torch.Tensor  # (B*S,) shift-set index of each forward row

    @property
    def slots(self) -> int:
        return int(self.slot_shift.shape[1])


def layout_pairs(
    b: int, ids_np: np.ndarray, shifts: ShiftSet, exhaustive: bool, plan: DrawPlan, pairs: int, dev: torch.device
) -> Layout:
    """Every planned pair of ``b`` images: every shift (exhaustive), or zero, random and the random pairs (sampled)."""
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
    return Layout(slot_shift, zero_slot, random_slot, pair_slots, flat_image, flat_shift)


def read_back(
    outputs: tuple[torch.Tensor, ...],
    lay: Layout,
    labels: torch.Tensor | None,
    ids_np: np.ndarray,
    shifts: ShiftSet,
    exhaustive: bool,
    num_classes: int,
) -> tuple[ShiftBatch | None, int]:
    """Per-row (pred, P(label), top-1, finite) as one ShiftBatch; images with a non-finite output are left out."""
    pred, p_lab, p_top, finite = outputs
    b, s = lay.slot_shift.shape
    pred_np = pred.view(b, s).cpu().numpy()
    p_top_np = p_top.view(b, s).cpu().numpy()
    p_lab_np = p_lab.view(b, s).cpu().numpy() if labels is not None else None
    ok_img = finite.view(b, s).all(dim=1).cpu().numpy()
    keep = np.flatnonzero(ok_img)
    bad = int(b - keep.size)
    if not keep.size:
        return None, bad
    return ShiftBatch(
        image_ids=ids_np[keep],
        labels=labels.numpy().astype(np.int64)[keep] if labels is not None else None,
        preds=pred_np[keep],
        p_label=p_lab_np[keep] if p_lab_np is not None else None,
        p_top=p_top_np[keep],
        shift_index=lay.slot_shift[keep],
        zero_slot=lay.zero_slot[keep],
        random_slot=lay.random_slot[keep],
        pair_slots=lay.pair_slots[keep],
        exhaustive=exhaustive,
        num_shifts=len(shifts),
        num_classes=num_classes,
    ), bad


def full_batch(
    forward: BatchedForward,
    x: torch.Tensor,
    lab_dev: torch.Tensor | None,
    labels: torch.Tensor,
    ids_np: np.ndarray,
    shifts: ShiftSet,
    exhaustive: bool,
    plan: DrawPlan,
    pairs: int,
    dh_all: torch.Tensor,
    dw_all: torch.Tensor,
    observers: list[Observer],
    polyphase: bool,
) -> tuple[ShiftBatch | None, int]:
    """Every planned (image, shift) pair of a batch through the model: the batch for the metrics, nonfinite count.

    The rows of this one batch only (the polyphase model and per-layer observers need that); the plain dense path
    goes through :func:`dense_job` and a :class:`~shiftaudit.engine.packing.RowPacker` instead."""
    b = x.shape[0]
    lay = layout_pairs(b, ids_np, shifts, exhaustive, plan, pairs, x.device)
    s = lay.slots
    flat_labels = lab_dev[lay.flat_image] if lab_dev is not None else None
    if polyphase:  # one input per image; the polyphase model returns its rows in shift-set order
        cost = int(getattr(forward.model, "cost", s))
        outputs = forward.run(lambda sl: x[sl], b, flat_labels, (), fan_out=s, cost=cost)
    else:
        bank = make_bank(x, shifts)  # circular roll, crop window of the canvas, or Fourier sub-pixel shift

        def make_inputs(sl: slice) -> torch.Tensor:
            k = lay.flat_shift[sl]
            return bank.gather(lay.flat_image[sl], dh_all[k], dw_all[k])

        for o in observers:
            o.begin_batch(lay.flat_image, lay.flat_shift, ids_np)
        outputs = forward.run(make_inputs, b * s, flat_labels, tuple(observers))
    lab = labels if lab_dev is not None else None
    return read_back(outputs, lay, lab, ids_np, shifts, exhaustive, forward.num_classes)


def dense_job(
    forward: BatchedForward,
    x: torch.Tensor,
    lab_dev: torch.Tensor | None,
    labels: torch.Tensor,
    ids_np: np.ndarray,
    shifts: ShiftSet,
    exhaustive: bool,
    plan: DrawPlan,
    pairs: int,
    dh_all: torch.Tensor,
    dw_all: torch.Tensor,
    cache: PredictionCache | None = None,
) -> PackJob:
    """The same rows as :func:`full_batch`'s dense path, as a job whose rows may share device batches with the
    previous and next image batches; the job's result is the same ``(ShiftBatch | None, nonfinite count)``. With a
    ``cache``, the job's rows are the pairs it lacks, and the result holds the cached outputs of the others."""
    lay = layout_pairs(x.shape[0], ids_np, shifts, exhaustive, plan, pairs, x.device)
    bank = make_bank(x, shifts)
    lab = labels if lab_dev is not None else None
    cached = cache.lookup(ids_np, lay.slot_shift) if cache is not None else None
    todo = torch.as_tensor(np.flatnonzero(~cached.hit.reshape(-1)), device=x.device) if cached is not None else None
    rows_image = lay.flat_image if todo is None else lay.flat_image[todo]
    rows_shift = lay.flat_shift if todo is None else lay.flat_shift[todo]

    def fill(out: torch.Tensor, start: int, stop: int) -> None:
        k = rows_shift[start:stop]
        gather_into(bank, out, rows_image[start:stop], dh_all[k], dw_all[k])

    def finish(outputs: tuple[torch.Tensor, ...]) -> tuple[ShiftBatch | None, int]:
        if cached is not None and todo is not None:
            outputs = with_cached(outputs, todo, cached)
        return read_back(outputs, lay, lab, ids_np, shifts, exhaustive, forward.num_classes)

    flat_labels = lab_dev[rows_image] if lab_dev is not None else None
    row_shape = (int(x.shape[1]), shifts.height, shifts.width)  # crop mode: x holds the larger canvases
    return PackJob(int(rows_image.numel()), row_shape, x.dtype, fill, flat_labels, finish)


def with_cached(outputs: tuple[torch.Tensor, ...], todo: torch.Tensor, cached: CachedRows) -> tuple[torch.Tensor, ...]:
    """Per-row (pred, P(label), top-1, finite) of every slot of a layout: the cached slots' outputs, and ``outputs``
    (the rows just run) at the flat slots ``todo``. A cached output was finite (the gate keeps no other)."""
    dev = todo.device
    full = (
        torch.as_tensor(cached.pred.reshape(-1), device=dev).clone(),
        torch.as_tensor(cached.p_label.reshape(-1), device=dev).clone(),
        torch.as_tensor(cached.p_top.reshape(-1), device=dev).clone(),
        torch.ones(cached.hit.size, dtype=torch.bool, device=dev),
    )
    for whole, run in zip(full, outputs):
        whole[todo] = run.to(whole.dtype)
    return full


def early_exit_batch(
    forward: BatchedForward,
    x: torch.Tensor,
    lab_dev: torch.Tensor,
    labels: np.ndarray,
    ids_np: np.ndarray,
    shifts: ShiftSet,
    dh_all: torch.Tensor,
    dw_all: torch.Tensor,
    pairs: int,
    cache: PredictionCache | None = None,
) -> tuple[ShiftBatch | None, int]:
    """Shifts in order of growing radius; an image leaves the batch at its first misclassified shift.

    The walk follows the set's :attr:`~shiftaudit.shifts.sets.ShiftSet.radius_order` (the set's own order for the
    sets the constructors build), so the first wrong column of a chunk is a smallest-radius failure and earlier
    chunks had none. Each chunk looks at most as far ahead as has been evaluated so far (at least 8 shifts), which
    bounds the work past an image's failure to about twice what it needed. The metrics get two slots per image: the
    zero shift and the first failure (the zero shift again for an image that never failed). With a ``cache``, the
    pairs found there are not run again.
    """
    b, n_shifts = x.shape[0], len(shifts)
    bank = ShiftBank(x)
    walk = shifts.radius_order  # the zero shift first: the only shift of radius 0
    fail = np.full(b, shifts.zero_index, dtype=np.int64)
    out = {k: np.zeros((b, 2), dtype=d) for k, d in (("pred", np.int64), ("p_lab", np.float32), ("p_top", np.float32))}
    nonfinite = np.zeros(b, dtype=bool)
    active = np.arange(b)
    pos = 0
    while active.size and pos < n_shifts:
        k = max(1, forward.batch // active.size)
        k = min(k, max(8, pos), n_shifts - pos)
        cols = walk[pos : pos + k]
        pred, p_lab, p_top, finite = _walk_chunk(forward, bank, lab_dev, ids_np, active, cols, dh_all, dw_all, cache)
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


def _walk_chunk(
    forward: BatchedForward,
    bank: ShiftBank,
    lab_dev: torch.Tensor,
    ids_np: np.ndarray,
    active: np.ndarray,
    cols: np.ndarray,
    dh_all: torch.Tensor,
    dw_all: torch.Tensor,
    cache: PredictionCache | None,
) -> tuple[np.ndarray, ...]:
    """(pred, P(label), top-1, finite) of each active image at each shift of ``cols``, as ``(images, shifts)``
    arrays: the pairs in ``cache`` from there, the others run now."""
    dev = lab_dev.device
    rows = active.size * cols.size
    cached = cache.lookup(ids_np[active], np.broadcast_to(cols, (active.size, cols.size))) if cache is not None else None
    todo = np.arange(rows) if cached is None else np.flatnonzero(~cached.hit.reshape(-1))
    flat_image = torch.as_tensor(np.repeat(active, cols.size)[todo], device=dev)
    flat_shift = torch.as_tensor(np.tile(cols, active.size)[todo], device=dev)

    def make_inputs(sl: slice) -> torch.Tensor:
        return bank.gather(flat_image[sl], dh_all[flat_shift[sl]], dw_all[flat_shift[sl]])

    res = forward.run(make_inputs, todo.size, lab_dev[flat_image]) if todo.size else None
    if cached is not None:
        res = with_cached(res or _no_rows(dev), torch.as_tensor(todo, device=dev), cached)
    assert res is not None
    return tuple(t.view(active.size, cols.size).cpu().numpy() for t in res)


def _no_rows(dev: torch.device) -> tuple[torch.Tensor, ...]:
    return tuple(torch.zeros(0, dtype=d, device=dev) for d in (torch.long, torch.float32, torch.float32, torch.bool))
