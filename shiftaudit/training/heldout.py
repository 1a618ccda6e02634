"""The held-out check of a fine-tuning run: how often the student agrees with the teacher, and how consistent it is.

A seeded share of the images (20 %, at most 512) is never trained on. Each held-out image gets two fixed random
circular shifts a and b, drawn once from the seed, so every evaluation of the run (and of a resumed run) sees the
same inputs. Measured, label-free: **agreement** (student and teacher agree at zero shift: the accuracy proxy),
**shifted agreement** (student at shift a against the teacher as given), **consistency** (the student's top-1 at
a equals its top-1 at b, the paper's §4.2.2 with one pair per image); with labels, **accuracy** too. Under
``torchrun`` each process evaluates its share and the counts are summed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn

from shiftaudit.data.dataset import DROPPED
from shiftaudit.data.loader import sampled_loader
from shiftaudit.errors import UsageError
from shiftaudit.rng import STREAM_HELDOUT
from shiftaudit.training.draws import roll_each, shifts_for


@dataclass(frozen=True)
class Evaluation:
    """One held-out measurement at optimiser step ``step`` (shares of ``images``; ``accuracy`` None unlabelled)."""

    step: int
    images: int
    agreement: float
    shifted_agreement: float
    consistency: float
    accuracy: float | None
    loss: float | None = None

    def score(self) -> float:
        """What "best" maximises: accuracy (agreement without labels) plus consistency; the earlier wins a tie."""
        return (self.agreement if self.accuracy is None else self.accuracy) + self.consistency

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def heldout_split(n: int, seed: int, fraction: float = 0.2, most: int = 512) -> tuple[list[int], list[int]]:
    """(train, held-out) positions of ``n`` images, split by a permutation drawn with ``seed``."""
    if n < 2:
        raise UsageError(f"Fine-tuning needs at least 2 images (some to train on, some held out), got {n}.")
    k = min(most, max(1, int(round(n * fraction))), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(perm[k:]), sorted(perm[:k])


class HeldOut:
    """This process's share of the held-out images, kept in memory with their fixed shifts and the teacher's
    answers (the teacher never changes, so it runs once)."""

    def __init__(
        self,
        data: Any,
        positions: list[int],
        teacher: nn.Module,
        *,
        seed: int,
        max_shift: int | None,
        batch_size: int,
        device: torch.device,
        world: tuple[int, int] = (0, 1),
    ) -> None:
        rank, size = world
        mine = positions[rank::size]
        images, labels, ids = [], [], []
        for x, y, i, flags in sampled_loader(data, [mine[k : k + batch_size] for k in range(0, len(mine), batch_size)]):
            ok = (flags & DROPPED) == 0
            images.append(x[ok])
            labels.append(y[ok])
            ids.append(i[ok])
        shape = (0, int(getattr(data, "channels", 3)), *getattr(data, "image_size", (1, 1)))
        self.images = torch.cat(images) if images else torch.empty(shape)
        self.labels = torch.cat(labels) if labels else torch.empty(0, dtype=torch.long)
        keys = torch.cat(ids).numpy() if ids else np.empty(0, dtype=np.int64)
        self.shifts = shifts_for(
            keys, seed, STREAM_HELDOUT, (int(self.images.shape[-2]), int(self.images.shape[-1])), max_shift, 2
        )
        self.batch_size, self.device, self.distributed = batch_size, device, size > 1
        self.teacher = self._top1(teacher, self.images)
        self.readable = self._sum([self.images.shape[0]])[0]
        if self.readable == 0:
            raise UsageError("None of the held-out images could be read: fine-tuning has nothing to check itself on.")

    @torch.no_grad()
    def _top1(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        out = [
            model(images[s : s + self.batch_size].to(self.device, dtype=dtype)).argmax(1).cpu()
            for s in range(0, images.shape[0], self.batch_size)
        ]
        return torch.cat(out) if out else torch.empty(0, dtype=torch.long)

    def _sum(self, counts: list[int]) -> list[int]:
        """The counts summed over the processes of a ``torchrun`` launch (as they are in one process)."""
        if not self.distributed:
            return counts
        t = torch.tensor(counts, dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        torch_dist.all_reduce(t)
        return [int(v) for v in t.tolist()]

    def evaluate(self, model: nn.Module, step: int, loss: float | None = None) -> Evaluation:
        """``model`` (left in eval mode) measured on the held-out images, summed over every process."""
        was_training = model.training
        model.eval()
        try:
            plain = self._top1(model, self.images)
            at_a = self._top1(model, roll_each(self.images, self.shifts[:, 0]))
            at_b = self._top1(model, roll_each(self.images, self.shifts[:, 1]))
        finally:
            model.train(was_training)
        labelled = self.labels >= 0
        n, agree, shifted, consistent, correct, with_label = self._sum(
            [
                int(plain.numel()),
                int((plain == self.teacher).sum()),
                int((at_a == self.teacher).sum()),
                int((at_a == at_b).sum()),
                int((plain == self.labels)[labelled].sum()),
                int(labelled.sum()),
            ]
        )
        return Evaluation(step, n, agree / n, shifted / n, consistent / n, correct / with_label if with_label else None, loss)
