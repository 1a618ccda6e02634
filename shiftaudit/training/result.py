"""What a fine-tuning run did: budgets used, held-out measurements as it went, and the weights it kept."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class TrainResult:
    """A fine-tuning run. ``agreement_*``/``shifted_agreement_*``/``consistency_*``: held-out measurements of the
    student before training and of the weights kept (the best evaluation's), see
    :mod:`shiftaudit.training.heldout`; ``teacher_consistency``: the original model's on the same pairs.
    ``stopped_by``: "steps", "epochs", "seconds", "early stop" or "no improvement" (patience)."""

    steps: int
    seconds: float
    stopped_by: str
    train_images: int
    heldout_images: int
    batch_size: int
    temperature: float
    lr: float
    bn: str
    seed: int
    loss_first: float
    loss_last: float
    agreement_before: float
    agreement_after: float
    shifted_agreement_before: float
    shifted_agreement_after: float
    consistency_before: float = float("nan")
    consistency_after: float = float("nan")
    teacher_consistency: float = float("nan")
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    best_step: int = 0
    epochs: float = 0.0
    processes: int = 1
    resumed_at_step: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
