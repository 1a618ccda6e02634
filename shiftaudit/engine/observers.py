"""The engine's two plug-in protocols: what watches the forward passes, and what hears how far the audit got.

They sit apart from the engine so that their implementations (per-layer distances in :mod:`shiftaudit.metrics.layers`, the
CLI's progress bar) can name them without importing the engine; :mod:`shiftaudit.engine.runner` re-exports both.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from torch import nn


class Observer(Protocol):
    """Something that watches the same forward passes as the metrics (e.g. per-layer feature distances).

    The engine calls ``attach`` once, ``begin_batch`` with the flattened (image slot, shift index) layout of each
    image batch, then per device chunk ``begin_chunk``/``on_inputs``/``on_logits``/``end_chunk`` (or ``abort_chunk``
    when the chunk is retried after running out of memory), and ``detach`` at the end. ``name``: its report key;
    ``compute``: its report entry (an :class:`~shiftaudit.metrics.entries.Entry` whose type is listed in
    :data:`~shiftaudit.metrics.entries.SECTIONS` to be read back typed, or a JSON value).
    """

    name: str

    def attach(self, model: nn.Module) -> None: ...

    def detach(self) -> None: ...

    def begin_batch(self, flat_image: torch.Tensor, flat_shift: torch.Tensor, image_ids: np.ndarray) -> None: ...

    def begin_chunk(self, sl: slice) -> None: ...

    def on_inputs(self, x: torch.Tensor) -> None: ...

    def on_logits(self, logits: torch.Tensor) -> None: ...

    def end_chunk(self) -> None: ...

    def abort_chunk(self) -> None: ...

    def compute(self) -> Any: ...


class Progress(Protocol):
    """What the engine reports to: the CLI plugs a rich progress bar in, the API passes None."""

    def start(self, total: int, description: str) -> None: ...

    def advance(self, n: int) -> None: ...

    def stop(self) -> None: ...
