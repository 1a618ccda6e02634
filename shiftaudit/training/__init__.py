"""Fine-tuning a patched model towards the original (label-free distillation, optionally with labels), at scale.

:func:`finetune` with a :class:`TrainConfig` runs it; under ``torchrun`` it is data-parallel. See docs/patching.md.
"""

from shiftaudit.training.config import TrainConfig
from shiftaudit.training.heldout import Evaluation, heldout_split
from shiftaudit.training.loop import finetune
from shiftaudit.training.result import TrainResult

__all__ = ["Evaluation", "TrainConfig", "TrainResult", "finetune", "heldout_split"]
