"""The result of loading a checkpoint: the module plus everything we learnt about it on the way."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from shiftaudit.data.presets import Preprocessing


@dataclass
class LoadedModel:
    """A ready-to-run model (eval mode, CPU) and where it came from.

    ``arch_source`` says how the architecture was decided (``"--arch"``, ``"metadata"``,
    ``"identified from weights"``, ``"n/a"`` for whole-model files), so reports can show the user what was assumed.
    ``preprocessing_assumed``: the preprocessing was not recorded in the file but guessed (an ONNX graph's input size
    with ImageNet's mean and std), so an audit says so.
    """

    model: nn.Module
    format: str
    source: str
    arch: str | None = None
    arch_kwargs: dict[str, Any] | None = None
    num_classes: int | None = None
    preprocessing: Preprocessing | None = None
    patch_spec: dict[str, Any] | None = None
    class_names: list[str] | None = None
    arch_source: str = "n/a"
    notes: list[str] = field(default_factory=list)
    parameter_count: int = 0
    preprocessing_assumed: bool = False

    def __post_init__(self) -> None:
        if not self.parameter_count:
            self.parameter_count = count_parameters(self.model)


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameter elements (tied weights counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
    return total
