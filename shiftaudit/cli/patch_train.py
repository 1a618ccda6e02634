"""``shiftaudit patch --distill DIR`` / ``--finetune DIR``: the fine-tuning flags, their checks, and the
:class:`~shiftaudit.training.TrainConfig` they make (docs/patching.md explains each default)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from shiftaudit.cli.choices import Augment, BatchNormPolicy
from shiftaudit.engine.resume import check_resume_path
from shiftaudit.errors import UsageError
from shiftaudit.training import TrainConfig

FinetuneOpt = Annotated[
    Path | None,
    typer.Option(
        "--finetune",
        help="Fine-tune the patched model on the labelled images here (any data --data reads, with labels): cross-entropy "
        "on the labels plus distillation from the original (--ce-weight), at random circular shifts.",
    ),
]
StepsOpt = Annotated[
    int | None,
    typer.Option(
        "--train-steps",
        "--distill-steps",
        min=1,
        help="Fine-tuning budget: optimiser steps. With no budget flag: 300 steps or 120 s.",
    ),
]
EpochsOpt = Annotated[
    float | None, typer.Option("--train-epochs", min=0.001, help="Fine-tuning budget: passes over the training images.")
]
SecondsOpt = Annotated[
    float | None,
    typer.Option(
        "--train-seconds",
        "--distill-seconds",
        min=0.001,
        help="Fine-tuning budget: seconds of training (evaluations included); a step that would end past it is not "
        "started. The run stops at whichever budget comes first.",
    ),
]
LrOpt = Annotated[float, typer.Option("--train-lr", "--distill-lr", min=1e-9, help="Peak learning rate (AdamW).")]
TrainBatchOpt = Annotated[
    int, typer.Option("--train-batch", min=1, help="Images per optimiser step, over all processes and micro-batches.")
]
AccumulateOpt = Annotated[
    int, typer.Option("--accumulate", min=1, help="Micro-batches per optimiser step (gradient accumulation).")
]
WarmupOpt = Annotated[int, typer.Option("--warmup", min=0, help="Steps of linear learning-rate warm-up.")]
ScheduleOpt = Annotated[
    bool, typer.Option("--cosine/--constant-lr", help="Cosine decay to zero over the step or epoch budget after warm-up.")
]
WeightDecayOpt = Annotated[
    float, typer.Option("--weight-decay", min=0.0, help="AdamW weight decay (not applied to biases and norm weights).")
]
EmaOpt = Annotated[
    float | None,
    typer.Option("--ema", min=0.0, max=0.999999, help="Keep an exponential moving average of the weights with this decay."),
]
AugmentOpt = Annotated[
    Augment, typer.Option("--augment", case_sensitive=False, help="Training augmentation before the random shift.")
]
CeWeightOpt = Annotated[
    float | None,
    typer.Option("--ce-weight", min=0.0, max=1.0, help="--finetune: weight of cross-entropy on labels (default 0.5)."),
]
EvalEveryOpt = Annotated[
    int,
    typer.Option("--eval-every", min=0, help="Measure held-out agreement and consistency every this many steps; keep the best."),
]
PatienceOpt = Annotated[
    int | None, typer.Option("--patience", min=1, help="Stop after this many evaluations without improvement.")
]
TrainBnOpt = Annotated[
    BatchNormPolicy,
    typer.Option("--train-bn", case_sensitive=False, help="BatchNorm while training: frozen statistics, or batch statistics."),
]
TrainResumeOpt = Annotated[
    Path | None,
    typer.Option(
        "--resume",
        help="Save the fine-tuning state to this file as it goes (at each evaluation and on Ctrl-C/SIGTERM) and continue "
        "from it when it exists: the same command continues a stopped run to the weights of an uninterrupted one.",
    ),
]


TRAIN_FLAGS = {
    "steps": "--train-steps", "epochs": "--train-epochs", "seconds": "--train-seconds", "lr": "--train-lr",
    "batch_size": "--train-batch", "accumulate": "--accumulate", "warmup": "--warmup", "weight_decay": "--weight-decay",
    "ema": "--ema", "ce_weight": "--ce-weight", "eval_every": "--eval-every", "patience": "--patience",
}  # fmt: skip
DEFAULT_BUDGET = (300, 120.0)  # steps, seconds: a CPU-sized run; give any budget flag to set your own


@dataclass(frozen=True)
class TrainFlags:
    """The fine-tuning flags as the command line gave them."""

    steps: int | None = None  # no budget given: DEFAULT_BUDGET
    epochs: float | None = None
    seconds: float | None = None
    lr: float = 1e-3
    batch: int = 32
    accumulate: int = 1
    warmup: int = 0
    cosine: bool = True
    weight_decay: float = 0.0
    ema: float | None = None
    augment: str = "none"
    ce_weight: float | None = None
    eval_every: int = 50
    patience: int | None = None
    bn: str = "frozen"
    resume: Path | None = None

    def check(self, *, distill: Path | None, finetune: Path | None) -> None:
        """Refuse, before the model loads, a mix that cannot run."""
        if distill is not None and finetune is not None:
            raise UsageError(
                "--distill (unlabelled images) and --finetune (labelled images) are two ways to train: give one of them."
            )
        if self.ce_weight is not None and finetune is None:
            raise UsageError("--ce-weight weighs the labels of --finetune: add --finetune DIR, or drop --ce-weight.")
        if self.resume is not None:
            if distill is None and finetune is None:
                raise UsageError("--resume saves a fine-tuning run: add --distill or --finetune, or drop it.")
            check_resume_path(self.resume)
        if distill is not None or finetune is not None:
            try:
                self.config(finetune=finetune is not None, max_shift=None, seed=0, precision="fp32")
            except UsageError as exc:  # the library names TrainConfig's fields; here they are this command's flags
                raise UsageError(re.sub(r"`([a-z_]+)`", lambda m: TRAIN_FLAGS.get(m.group(1), m.group(0)), str(exc))) from None

    def config(self, *, finetune: bool, max_shift: int | None, seed: int, precision: str) -> TrainConfig:
        """The run's settings; with no budget given, the default one (300 steps or 120 s)."""
        given = self.steps is not None or self.epochs is not None or self.seconds is not None
        steps, seconds = (self.steps, self.seconds) if given else DEFAULT_BUDGET
        return TrainConfig(
            steps=steps,
            epochs=self.epochs,
            seconds=seconds,
            batch_size=self.batch,
            accumulate=self.accumulate,
            lr=self.lr,
            schedule="cosine" if self.cosine else "constant",
            warmup=self.warmup,
            weight_decay=self.weight_decay,
            ema=self.ema,
            ce_weight=(0.5 if self.ce_weight is None else self.ce_weight) if finetune else 0.0,
            max_shift=max_shift,
            augment=self.augment,
            bn=self.bn,
            eval_every=self.eval_every,
            patience=self.patience,
            precision="bf16" if precision == "bf16" else "fp32",
            seed=seed,
        )
