"""Run a graph that takes only some batch sizes (a fixed N, or a range) on any batch the engine sends."""

from __future__ import annotations

from collections.abc import Callable

import torch


def run_in_batches(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, low: int, high: int | None) -> torch.Tensor:
    """``run`` over ``x`` in chunks of at most ``high`` rows (all of them when None); a chunk smaller than ``low`` is
    padded with zero rows up to ``low``, and their outputs are dropped. Rows never mix, so each output row is the
    graph's answer for its input row alone."""
    step = high or max(low, x.shape[0])
    parts = []
    for start in range(0, x.shape[0], step):
        chunk = x[start : start + step]
        rows = chunk.shape[0]
        if rows < low:
            chunk = torch.cat([chunk, chunk.new_zeros((low - rows, *chunk.shape[1:]))])
        parts.append(run(chunk)[:rows])
    return torch.cat(parts)
