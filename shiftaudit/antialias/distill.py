"""Label-free distillation: fine-tune the patched model to agree with the original, under shifts.

Patching keeps every weight, but a blur the network was never trained with changes what every later layer sees; on
a real pretrained network post-hoc blurring can cost most of the accuracy. The paper trains with the blur in place
(full ImageNet training). Here the original model is the teacher and needs no labels: the patched model (the
student) sees a randomly circularly shifted copy of each unlabelled image and is trained to match the teacher's
softened output on the unshifted image (KL divergence at temperature T, times T^2). Matching the teacher on the
image as given keeps accuracy; matching it at every shift teaches the student the invariance the blur makes
possible, so the consistency gain is kept.

This is the classic entry point; the trainer itself (data-parallel, scheduled, evaluated as it goes, resumable) is
:mod:`shiftaudit.training`, and :func:`distill` is :func:`shiftaudit.training.finetune` with the settings given as
keywords.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from shiftaudit.training import TrainConfig, TrainResult, finetune, heldout_split
from shiftaudit.training.draws import roll_each

DistillResult = TrainResult  # the name this result had before the trainer grew

__all__ = ["DistillResult", "distill", "heldout_split", "random_shifts"]


def random_shifts(images: torch.Tensor, max_shift: int | None, gen: torch.Generator) -> torch.Tensor:
    """Each image circularly shifted by its own offset, uniform in [-max_shift, max_shift]^2 (every offset when
    None), drawn from ``gen``."""
    n, _, h, w = images.shape
    if max_shift is None:
        dh, dw = torch.randint(0, h, (n,), generator=gen), torch.randint(0, w, (n,), generator=gen)
    else:
        dh = torch.randint(-max_shift, max_shift + 1, (n,), generator=gen)
        dw = torch.randint(-max_shift, max_shift + 1, (n,), generator=gen)
    return roll_each(images, torch.stack([dh, dw], 1).numpy())


def distill(
    teacher: nn.Module,
    student: nn.Module,
    data: Any,
    *,
    steps: int | None = 300,
    seconds: float | None = None,
    seed: int = 0,
    temperature: float = 4.0,
    lr: float = 1e-3,
    batch_size: int = 32,
    max_shift: int | None = None,
    bn: str = "frozen",
    heldout_fraction: float = 0.2,
    device: str | torch.device = "cpu",
    progress: Any = None,
    **settings: Any,
) -> TrainResult:
    """Fine-tune ``student`` (in place) to match ``teacher`` on the images of ``data`` (labels ignored unless
    ``ce_weight`` is given). Stops after ``steps`` optimiser steps or ``seconds`` of training, whichever comes first;
    other :class:`~shiftaudit.training.TrainConfig` fields (``epochs``, ``accumulate``, ``warmup``, ``ema`` ...),
    ``resume`` and ``num_workers`` pass through. Returns the run's :class:`~shiftaudit.training.TrainResult`."""
    run = {k: settings.pop(k) for k in ("resume", "num_workers") if k in settings}
    config = TrainConfig(
        steps=steps,
        seconds=seconds,
        seed=seed,
        temperature=temperature,
        lr=lr,
        batch_size=batch_size,
        max_shift=max_shift,
        bn=bn,
        heldout_fraction=heldout_fraction,
        **settings,
    )
    return finetune(teacher, student, data, config, device=device, progress=progress, **run)
