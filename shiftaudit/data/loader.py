"""The loader that feeds the engine: batches of ``(images, labels, indices)`` from an
:class:`~shiftaudit.data.dataset.AuditDataset`, decoded in worker processes, unreadable images recorded and left out
(or, with ``strict``, refused).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from shiftaudit.data.dataset import DROPPED, AuditDataset
from shiftaudit.data.preprocess import UNREADABLE
from shiftaudit.data.sources import load_data
from shiftaudit.errors import DataError, ShiftAuditError
from shiftaudit.limits import check_range, max_workers


class _Indexed(Dataset):
    """Adds the item's index and decode flags; never raises for an unreadable file (the main process decides)."""

    def __init__(self, ds: AuditDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int, int]:
        x, y, flags = self.ds.load(i)
        return x, y, i, flags


class AuditLoader(DataLoader):
    """A DataLoader yielding ``(images, labels, indices)``; it records decode flags and drops unreadable images."""

    dataset: _Indexed  # what make_loader gives it

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:  # type: ignore[override]
        ds = self.dataset.ds
        yielded = 0
        for images, labels, ids, flags in _worker_errors_said(super().__iter__()):
            ds.record(ids.numpy(), flags.numpy())
            bad = (flags & DROPPED) != 0
            if bool(bad.any()):
                if ds.strict:
                    raise ds.unreadable_error(int(ids[bad][0]))
                keep = ~bad
                if not bool(keep.any()):
                    continue
                images, labels, ids = images[keep], labels[keep], ids[keep]
            yielded += int(ids.numel())
            yield images, labels, ids
        if yielded == 0 and len(ds) > 0:
            first = int(np.flatnonzero(ds._flags & DROPPED)[0])
            verb = "read" if ds._flags[first] & UNREADABLE else "used"
            raise DataError(f"None of the {len(ds)} images could be {verb}; the first: {ds.unreadable_error(first).message}")


def _worker_errors_said(batches: Iterator[Any]) -> Iterator[Any]:
    """A decoding worker that dies (killed for memory, a crashing codec) is a one-sentence DataError, not a bug."""
    while True:
        try:
            item = next(batches)
        except StopIteration:
            return
        except Exception as exc:
            text = str(exc).strip()
            if "DataLoader worker" not in text:
                raise
            lines = text.splitlines()
            if isinstance(exc, ShiftAuditError) and len(lines) > 1:  # re-raised from a worker with its traceback
                raise type(exc)(lines[-1].split(": ", 1)[-1]) from None
            first = lines[0].rstrip(".") if lines else type(exc).__name__
            raise DataError(f"An image-decoding worker process failed ({first}); rerun with --workers 0.") from None
        yield item


def default_workers(dataset: AuditDataset, batch_size: int) -> int:
    """0 for data in memory; for files min(4, CPUs - 1), and no more workers than batches."""
    if getattr(dataset.source, "in_memory", True):
        return 0
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    batches = -(-len(dataset) // max(1, batch_size))
    return max(0, min(4, cpus - 1, batches))


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decoding workers must not fight the model's threads


def sampled_loader(dataset: AuditDataset, batch_sampler: Iterable[list[int]], *, num_workers: int = 0) -> DataLoader:
    """Batches of ``(images, labels, indices, decode flags)`` in the order ``batch_sampler`` gives, nothing dropped:
    for a caller that must keep every batch in step with its own schedule (fine-tuning) and masks unreadable images
    itself (``flags & DROPPED``)."""
    check_range(num_workers, "--workers", 0, max_workers(), "each worker is a process holding a copy of the data set")
    return DataLoader(
        _Indexed(dataset),
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        worker_init_fn=_worker_init if num_workers > 0 else None,
    )


def make_loader(
    dataset: Any,
    *,
    batch_size: int,
    num_workers: int | None = None,
    pin_memory: bool = False,
    indices: Sequence[int] | None = None,
) -> AuditLoader:
    """Batches of ``(images float, labels int64 (-1: unlabelled), indices int64)`` in dataset order.

    ``indices``: only these dataset positions, in this order (a process's shard, the images a resumed run still
    needs); the ids yielded stay dataset positions either way.
    """
    if not isinstance(dataset, AuditDataset):
        dataset = load_data(dataset, raw=True)
    workers = default_workers(dataset, batch_size) if num_workers is None else int(num_workers)
    check_range(workers, "--workers", 0, max_workers(), "each worker is a process holding a copy of the data set")
    return AuditLoader(
        _Indexed(dataset),
        batch_size=batch_size,
        shuffle=False,
        sampler=None if indices is None else [int(i) for i in indices],
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        worker_init_fn=_worker_init if workers > 0 else None,
    )
