"""What a fine-tuning run does, as one frozen value: every setting the report records and a resumed run must match.

The patched model (the student) learns the original's (the teacher's) softened outputs on unlabelled images, seen
at random circular shifts (label-free distillation); with ``ce_weight`` > 0 and labelled images it also learns the
labels (cross-entropy), ``(1 - ce_weight) * KD + ce_weight * CE``. The schedule is the usual one for fine-tuning:
AdamW, linear warm-up, then cosine decay to zero over the step budget (constant after warm-up when only a time
budget is given, since then no horizon is known in advance).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from shiftaudit.errors import UsageError

BN_POLICIES = ("frozen", "train")
AUGMENTS = ("none", "flip", "crop", "crop+flip")
SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class TrainConfig:
    """Settings of a fine-tuning run (see docs/patching.md for how each was chosen).

    Budgets: ``steps`` optimiser steps, ``epochs`` passes over the training images, ``seconds`` of training
    (periodic evaluations included), whichever ends first; at least one must be given. ``batch_size`` is the global
    batch of one optimiser step, split over ``accumulate`` micro-batches and the processes of a ``torchrun`` launch.
    ``max_shift``: the student's random circular shifts come from ``[-max_shift, max_shift]^2`` (every offset when
    None). ``ema``: decay of an exponential moving average of the weights (None: off); the average is what is
    evaluated and kept. ``eval_every``: held-out agreement and consistency every this many steps (0: only before and
    after); the best evaluation's weights are kept; ``patience`` evaluations without improvement stop the run.
    """

    steps: int | None = 300
    epochs: float | None = None
    seconds: float | None = 120.0
    batch_size: int = 32
    accumulate: int = 1
    lr: float = 1e-3
    schedule: str = "cosine"
    warmup: int = 0
    weight_decay: float = 0.0
    ema: float | None = None
    temperature: float = 4.0
    ce_weight: float = 0.0
    max_shift: int | None = None
    augment: str = "none"
    bn: str = "frozen"
    eval_every: int = 50
    patience: int | None = None
    heldout_fraction: float = 0.2
    heldout_most: int = 512
    precision: str = "fp32"
    seed: int = 0

    def __post_init__(self) -> None:
        check_config(self)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def horizon(self, steps_per_epoch: int) -> int | None:
        """The step budget (the schedule's length): the smaller of ``steps`` and ``epochs`` worth of steps."""
        budgets = [b for b in (self.steps, None if self.epochs is None else math.ceil(self.epochs * steps_per_epoch)) if b]
        return min(budgets) if budgets else None


def _positive(name: str, value: float | None, *, allow_none: bool = True, zero: bool = False) -> None:
    if value is None:
        if not allow_none:
            raise UsageError(f"`{name}` must be given.")
        return
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise UsageError(f"`{name}` must be {'zero or more' if zero else 'positive'}, got {value}.")


def check_config(c: TrainConfig) -> None:
    """Refuse a setting that cannot train, in one sentence naming it, before any image is read."""
    if c.steps is None and c.epochs is None and c.seconds is None:
        raise UsageError("Fine-tuning needs a budget: a number of steps, epochs or seconds.")
    for name in ("steps", "epochs", "seconds", "lr", "temperature"):
        _positive(name, getattr(c, name))
    for name in ("weight_decay", "warmup", "eval_every"):
        _positive(name, getattr(c, name), allow_none=False, zero=True)
    if c.steps is not None and int(c.steps) != c.steps:
        raise UsageError(f"`steps` must be a whole number, got {c.steps}.")
    if c.batch_size < 1 or c.accumulate < 1 or c.batch_size % c.accumulate:
        raise UsageError(
            f"`batch_size` ({c.batch_size}) must be a positive multiple of `accumulate` ({c.accumulate}): each optimiser "
            "step is that many equal micro-batches."
        )
    if c.ema is not None and not 0 < c.ema < 1:
        raise UsageError(f"`ema` must be a decay between 0 and 1 (e.g. 0.999), got {c.ema}.")
    if not 0 <= c.ce_weight <= 1:
        raise UsageError(f"`ce_weight` must be between 0 and 1, got {c.ce_weight}.")
    if c.patience is not None and c.patience < 1:
        raise UsageError(f"`patience` must be at least 1 evaluation, got {c.patience}.")
    if c.max_shift is not None and c.max_shift < 0:
        raise UsageError(f"`max_shift` must be zero or more, got {c.max_shift}.")
    if not 0 < c.heldout_fraction < 1 or c.heldout_most < 1:
        raise UsageError("`heldout_fraction` must be between 0 and 1 and `heldout_most` at least 1.")
    for name, value, allowed in (
        ("bn", c.bn, BN_POLICIES),
        ("augment", c.augment, AUGMENTS),
        ("schedule", c.schedule, SCHEDULES),
    ):
        if value not in allowed:
            raise UsageError(f"`{name}` must be one of {', '.join(allowed)}, got {value!r}.")
    if c.precision not in ("fp32", "bf16"):
        raise UsageError(f"Fine-tuning runs in fp32 or with bf16 autocast (`precision` bf16), not {c.precision!r}.")
