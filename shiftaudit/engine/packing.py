"""Forward rows packed across image batches, so no device batch is a small tail.

An image batch of B images at S shifts is B*S rows; when that is not a multiple of the device batch, running each
image batch on its own ends it with a short forward (81 shifts at batch 16: 5 full calls and one of a single row per
image). A :class:`RowPacker` instead queues each image batch's rows as a :class:`PackJob` and forwards only full
device batches, letting one device batch hold the end of an image batch and the start of the next; what is left is
run when the loader is exhausted (:meth:`RowPacker.flush`), so only the run's very last device batch can be short.

Per-row outputs are not bit-for-bit independent of the batch they ran in (oneDNN picks other kernels for small
batches: a patched resnet18's logits moved by ~5e-7 between batch 7 and batch 16), so carrying rows over changes
float metrics in about the 7th significant digit against the unpacked layout, and can flip a prediction only where
two logits tie to rounding. It is therefore on by default on CUDA, where a short tail costs nearly a full batch,
and opt-in on the CPU (``pack_rows=True``), where it saved 4-8 % (docs/performance.md).

The metrics do not see any of this: a job's result (its ``ShiftBatch``) is built from that image batch's rows alone,
once all of them are back, and jobs finish in the order they were added. Each row is reduced on the device exactly as
before; only which rows share a forward changes.

The inputs of every device batch are written into one reused buffer (``fill(out, start, stop)``) instead of a fresh
tensor per forward: each batch's outputs are reduced to per-row numbers before the buffer is written again, so no
result can alias a later batch's inputs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from shiftaudit.engine.forward import BatchedForward


@dataclass
class PackJob:
    """One image batch's forward rows: how to build rows ``[start, stop)`` into a buffer, their labels, and what to
    make of the per-row outputs once every row is back."""

    rows: int
    row_shape: tuple[int, ...]  # (C, H, W) of one input row
    dtype: torch.dtype
    fill: Callable[[torch.Tensor, int, int], None]  # fill(out, start, stop): rows start..stop-1 into out
    labels: torch.Tensor | None  # (rows,) on the device, or None for unlabelled data
    finish: Callable[[tuple[torch.Tensor, ...]], Any]
    sent: int = 0  # rows already forwarded
    outputs: tuple[torch.Tensor, ...] = field(default=())


class RowPacker:
    """Forwards the queued jobs' rows through one reused input buffer; returns the jobs' results in the order added.

    ``carry=True``: only full device batches run, the rest waits for the next job. ``carry=False``: each job runs
    at once, chunked exactly as without a packer (full batches, then its own tail), so every number is unchanged.
    """

    def __init__(self, forward: BatchedForward, carry: bool = True) -> None:
        self.forward = forward
        self.carry = carry
        self.jobs: deque[PackJob] = deque()
        self._buffer: torch.Tensor | None = None

    @property
    def rows_ahead(self) -> int:
        """Rows already forwarded for jobs whose results were not taken yet (counted by ``forward.rows`` already)."""
        return sum(j.sent for j in self.jobs)

    def add(self, job: PackJob) -> Iterator[Any]:
        """Queue a job and run every full device batch now possible; the results of the jobs that completed."""
        dev = self.forward.device
        job.outputs = (
            torch.empty(job.rows, dtype=torch.long, device=dev),
            torch.empty(job.rows, dtype=torch.float32, device=dev),
            torch.empty(job.rows, dtype=torch.float32, device=dev),
            torch.empty(job.rows, dtype=torch.bool, device=dev),
        )
        self.jobs.append(job)
        unsent = self._unsent()
        self._run(unsent - unsent % max(1, self.forward.batch) if self.carry else unsent)
        return self._finished()

    def flush(self) -> Iterator[Any]:
        """Run whatever is left (the run's one short device batch) and return the remaining results."""
        self._run(self._unsent())
        return self._finished()

    def _finished(self) -> Iterator[Any]:
        """Results of the leading jobs whose every row is back, oldest first (a later job never overtakes). Lazy: a
        finished job leaves the queue only when its result is taken, so :attr:`rows_ahead` stays exact meanwhile."""
        while self.jobs and self.jobs[0].sent == self.jobs[0].rows:
            job = self.jobs.popleft()
            yield job.finish(job.outputs)

    def _unsent(self) -> int:
        return sum(j.rows - j.sent for j in self.jobs)

    def _segments(self, n: int) -> list[tuple[PackJob, int, int]]:
        """The next ``n`` unsent rows as (job, start, stop) pieces, oldest job first."""
        out = []
        for job in self.jobs:
            take = min(n, job.rows - job.sent)
            if take > 0:
                out.append((job, job.sent, job.sent + take))
                n -= take
            if n == 0:
                break
        return out

    def _run(self, n: int) -> None:
        if n <= 0:
            return
        segments = self._segments(n)
        offsets = [0]
        for _, a, b in segments:
            offsets.append(offsets[-1] + b - a)
        labels = None
        if segments[0][0].labels is not None:
            labels = torch.cat([job.labels[a:b] for job, a, b in segments if job.labels is not None])

        def make_inputs(sl: slice) -> torch.Tensor:
            return self._inputs(segments, offsets, sl)

        results = self.forward.run(make_inputs, n, labels)
        for (job, a, b), lo in zip(segments, offsets):
            for dst, src in zip(job.outputs, results):
                dst[a:b] = src[lo : lo + b - a]
            job.sent = b

    def _inputs(self, segments: list[tuple[PackJob, int, int]], offsets: list[int], sl: slice) -> torch.Tensor:
        """Rows ``sl`` of the packed run, built into the reused buffer (a view of its first rows)."""
        first = segments[0][0]
        buf = self._buffer_for(sl.stop - sl.start, first.row_shape, first.dtype)
        for (job, a, _b), lo, hi in zip(segments, offsets, offsets[1:]):
            lo_c, hi_c = max(lo, sl.start), min(hi, sl.stop)
            if lo_c < hi_c:
                job.fill(buf[lo_c - sl.start : hi_c - sl.start], a + lo_c - lo, a + hi_c - lo)
        return buf[: sl.stop - sl.start]

    def _buffer_for(self, n: int, row_shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        buf = self._buffer
        if buf is None or buf.shape[0] < n or tuple(buf.shape[1:]) != row_shape or buf.dtype != dtype:
            rows = max(n, self.forward.batch)
            buf = self._buffer = torch.empty((rows, *row_shape), dtype=dtype, device=self.forward.device)
        return buf
