"""The fine-tuning loop: data-parallel under ``torchrun``, budgeted, evaluated as it goes, resumable, interruptible.

One optimiser step takes the global batch of ``batch_size`` images that :mod:`shiftaudit.training.draws` assigns to
that step, in ``accumulate`` micro-batches; under ``torchrun`` each process takes an equal slice of each micro-batch
and DDP averages the gradients. The loss of a slice is the sum of its per-image losses over the slice's nominal
size, so the averaged gradient is the gradient of the mean over the global batch: the same step as one process with
the same global batch, to float rounding. Unreadable images weigh zero.

Budgets (steps, epochs, seconds) are checked before each step; the time budget with the measured step time (and the
evaluation that step would trigger), so a run ends before its deadline instead of a whole step after it, and between
micro-batches, where a step that would run late is abandoned. Ctrl-C and SIGTERM stop the run at the next step
boundary: the state is saved (with ``resume``) and the run ends with :class:`~shiftaudit.errors.TrainingInterrupted`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from shiftaudit.data.dataset import DROPPED
from shiftaudit.data.loader import sampled_loader
from shiftaudit.engine import distributed
from shiftaudit.errors import TrainingInterrupted, UsageError
from shiftaudit.training import state as saved
from shiftaudit.training.config import TrainConfig
from shiftaudit.training.draws import sample_keys, step_positions, views
from shiftaudit.training.heldout import Evaluation, HeldOut, heldout_split
from shiftaudit.training.result import TrainResult


class Batches:
    """This process's micro-batches, step after step from ``start``: lists of dataset positions for the loader."""

    def __init__(self, train: list[int], config: TrainConfig, rank: int, world: int, start: int, horizon: int | None) -> None:
        self.train, self.config, self.rank, self.world = train, config, rank, world
        self.start, self.horizon = start, horizon
        self.per = config.batch_size // config.accumulate  # images of one micro-batch, all processes together
        self.slice = self.per // world  # ... of this process

    def offsets(self, micro: int) -> torch.Tensor:
        """Places in the global batch of this process's slice of micro-batch ``micro``."""
        return micro * self.per + self.rank * self.slice + torch.arange(self.slice)

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start
        while self.horizon is None or step < self.horizon:
            pos = step_positions(len(self.train), self.config.batch_size, self.config.seed, step)
            for micro in range(self.config.accumulate):
                yield [self.train[int(p)] for p in pos[self.offsets(micro)]]
            step += 1


def schedule_factor(config: TrainConfig, horizon: int | None) -> Any:
    """The learning-rate multiplier of each step: linear warm-up, then cosine to zero over ``horizon`` steps."""

    def factor(step: int) -> float:
        if step < config.warmup:
            return (step + 1) / config.warmup
        if config.schedule == "constant" or horizon is None:
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - config.warmup) / max(1, horizon - config.warmup))))

    return factor


def optimizer_for(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over every floating-point parameter; biases and normalisation weights (1-D) are not decayed."""
    params = [p for p in model.parameters() if p.is_floating_point()]
    for p in params:
        p.requires_grad_(True)
    decay = [p for p in params if p.ndim > 1]
    rest = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr)


@contextlib.contextmanager
def stop_requests() -> Iterator[dict[str, int | None]]:
    """While training, Ctrl-C and SIGTERM ask for a stop at the next step boundary (a step cut in half would leave the
    weights and the optimiser's moments out of step); a second Ctrl-C stops at once."""
    box: dict[str, int | None] = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield box
        return

    def ask(signum: int, frame: Any) -> None:
        if box["signal"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        box["signal"] = signum

    previous = {s: signal.signal(s, ask) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield box
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


def _kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per image: KL(teacher || student) of the outputs softened at ``temperature``, times T^2 (Hinton et al.)."""
    s = F.log_softmax(student_logits.float() / temperature, dim=1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(s, t, log_target=True, reduction="none").sum(1) * temperature**2


class Trainer:
    """One fine-tuning run (see :func:`finetune`): the objects it trains and where it stands."""

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        data: Any,
        config: TrainConfig,
        device: torch.device,
        resume: Any,
        num_workers: int,
        progress: Any,
    ) -> None:
        ctx = distributed.setup(device)
        self.rank, self.world = (ctx.rank, ctx.world) if ctx else (0, 1)
        self.device = ctx.device if ctx else device
        self.config, self.data, self.progress = config, data, progress if self.rank == 0 else None
        if config.ce_weight and not getattr(data, "has_labels", False):
            raise UsageError(
                "Fine-tuning on labels (--finetune, ce_weight) needs labelled images (a class-folder tree, or data with a "
                "label column); for unlabelled images use label-free distillation (--distill)."
            )
        self.train_pos, held_pos = heldout_split(len(data), config.seed, config.heldout_fraction, config.heldout_most)
        self.notes: list[str] = []
        self.config = config = self._fit_batch(config, len(self.train_pos))
        self.per_epoch = self._check_batches(len(self.train_pos))
        self.horizon = config.horizon(self.per_epoch)
        self.teacher = teacher.to(self.device).eval().requires_grad_(False)
        self.student = student.to(self.device)
        self.parts = saved.fingerprint(self.teacher, self.student, data, config.to_json())
        self.held = HeldOut(
            data,
            held_pos,
            self.teacher,
            seed=config.seed,
            max_shift=config.max_shift,
            batch_size=config.batch_size,
            device=self.device,
            world=(self.rank, self.world),
        )
        self.opt = optimizer_for(self.student, config)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.opt, schedule_factor(config, self.horizon))
        self.ema = (
            None
            if config.ema is None
            else AveragedModel(self.student, multi_avg_fn=get_ema_multi_avg_fn(config.ema), use_buffers=True)
        )
        self.model: nn.Module = self.student
        if self.world > 1:
            ids = [self.device] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.student, device_ids=ids)
        self.resume = resume
        self.num_workers = num_workers
        self.run = saved.RunState()
        self.step_s: float | None = None
        self.eval_s: float | None = None
        self.clock0: float | None = None
        self.elapsed0 = 0.0

    def _fit_batch(self, config: TrainConfig, n: int) -> TrainConfig:
        """A batch larger than the training images is lowered to them (to a multiple of the micro-batches and
        processes), with a note: a handful of photos can still be fine-tuned on."""
        unit = config.accumulate * self.world
        if n >= config.batch_size or n < unit:
            return config
        lowered = n // unit * unit
        self.notes.append(f"the batch of {config.batch_size} was lowered to {lowered}: there are {n} training images")
        return dataclasses.replace(config, batch_size=lowered)

    def _check_batches(self, n: int) -> int:
        c, per = self.config, self.config.batch_size // self.config.accumulate
        if n < c.batch_size:
            raise UsageError(
                f"Fine-tuning has {n} training images (after holding some out), fewer than one batch of {c.batch_size}: "
                "give more images or a smaller batch."
            )
        if per % self.world:
            raise UsageError(
                f"A micro-batch of {per} images ({c.batch_size} in {c.accumulate}) does not split evenly over {self.world} "
                "processes: make batch / accumulate a multiple of the process count."
            )
        return n // c.batch_size

    @property
    def evaluated(self) -> nn.Module:
        """What is evaluated and kept: the weight average when there is one, else the student."""
        return self.student if self.ema is None else self.ema.module

    def _autocast(self) -> Any:
        if self.config.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _agree(self, values: list[float]) -> list[float]:
        """The values summed over the processes (every process then takes the same decisions)."""
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        torch_dist.all_reduce(t)
        return [float(v) for v in t.tolist()]

    def _micro(self, batch: tuple[torch.Tensor, ...], micro: int, sync: bool) -> torch.Tensor:
        """Forward and backward of this process's slice of one micro-batch; returns its share of the step's loss."""
        c, images, labels, flags = self.config, batch[0], batch[1], batch[3]
        ok = (flags & DROPPED) == 0
        images = torch.where(ok.view(-1, 1, 1, 1), images, torch.zeros(()))  # an unreadable image weighs zero below
        keys = sample_keys(self.run.step, c.batch_size, self.batches.offsets(micro))
        shown, shifted = views(images, keys, c.seed, c.max_shift, c.augment)
        dtype = next((p.dtype for p in self.student.parameters() if p.is_floating_point()), torch.float32)
        no_sync = (
            self.model.no_sync() if isinstance(self.model, DistributedDataParallel) and not sync else contextlib.nullcontext()
        )
        with no_sync, self._autocast():
            with torch.no_grad():
                target = self.teacher(shown.to(self.device, dtype=dtype))
            out = self.model(shifted.to(self.device, dtype=dtype))
            per_image = _kd_loss(out, target, c.temperature)
            if c.ce_weight:
                ce = F.cross_entropy(out.float(), labels.to(self.device), ignore_index=-1, reduction="none")
                per_image = (1 - c.ce_weight) * per_image + c.ce_weight * ce
            loss = (per_image * ok.to(self.device)).sum() / (self.batches.slice * c.accumulate)
            loss.backward()
        return loss.detach()

    def _step(self, batches: Iterator[tuple[torch.Tensor, ...]], deadline: float | None) -> float | None:
        """One optimiser step; None when the time ran out between micro-batches (the step is abandoned, nothing
        changed). Returns the mean loss over the global batch."""
        self.student.train(self.config.bn == "train")
        self.opt.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for micro in range(self.config.accumulate):
            if micro and deadline is not None and self._agree([float(time.monotonic() > deadline)])[0]:
                self.opt.zero_grad(set_to_none=True)
                return None
            total += self._micro(next(batches), micro, sync=micro == self.config.accumulate - 1)
        loss = self._agree([float(total)])[0] / self.world  # each process's share is over its slice
        if not math.isfinite(loss):
            raise UsageError("Fine-tuning diverged (a non-finite loss); try a smaller learning rate.")
        self.opt.step()
        self.schedule.step()
        if self.ema is not None:
            self.ema.update_parameters(self.student)
        self.run.step += 1
        self.run.losses.append(loss)
        return loss

    def _evaluate(self, loss: float | None) -> Evaluation:
        """Measure the kept weights on the held-out images; remember them when they are the best so far."""
        t0 = time.monotonic()
        e = self.held.evaluate(self.evaluated, self.run.step, loss)
        self.run.history.append(e.to_json())
        if e.score() > self.run.best_score:
            self.run.best_score, self.run.best_step, self.run.since_best = e.score(), e.step, 0
            self.run.best_weights = {k: v.detach().cpu().clone() for k, v in self.evaluated.state_dict().items()}
        else:
            self.run.since_best += 1
        self.eval_s = time.monotonic() - t0
        return e

    def _prior_step_time(self, eval_s: float) -> None:
        """A first guess at a step's time, before any step ran (so the time budget holds from the first step): an
        evaluation runs 3 forwards per held-out image; a step runs the teacher's forward and the student's forward and
        backward (about 2 forwards) per image of this process's share of the batch."""
        local = max(1, self.held.images.shape[0])
        self.step_s = eval_s / (3 * local) * 4 * self.config.batch_size / self.world

    def _elapsed(self) -> float:
        """Seconds of training so far, across a resumed run's sessions."""
        return self.elapsed0 + (time.monotonic() - self.clock0 if self.clock0 is not None else 0.0)

    def _save(self) -> None:
        self.run.elapsed = self._elapsed()
        if self.resume is not None and self.rank == 0:
            saved.save(self.resume, self.parts, self.run, self.student, self.opt, self.schedule, self.ema)

    def _stop_reason(self, asked: dict[str, int | None]) -> str | None:
        """Why the run must stop before the next step (the same answer on every process), or None."""
        c, step = self.config, self.run.step
        elapsed = self._elapsed()
        due_eval = c.eval_every and (step + 1) % c.eval_every == 0
        needed = (self.step_s or 0.0) + ((self.eval_s or 0.0) if due_eval else 0.0)
        late = c.seconds is not None and elapsed + needed > c.seconds
        flags = self._agree([float(asked["signal"] is not None), float(asked["signal"] == signal.SIGTERM), float(late)])
        if flags[0]:
            return "sigterm" if flags[1] else "interrupt"
        if c.steps is not None and step >= c.steps:
            return "steps"
        if self.horizon is not None and step >= self.horizon:
            return "epochs"
        if c.patience is not None and self.run.since_best >= c.patience:
            return "no improvement"
        if flags[2]:
            return "seconds"
        return None

    def _interrupted(self, reason: str) -> TrainingInterrupted:
        self._save()
        total = self.horizon or self.run.step
        path = None if self.resume is None else str(self.resume)
        return TrainingInterrupted(self.run.step, total, path, terminated=reason == "sigterm")

    def _loop(self, asked: dict[str, int | None]) -> str:
        """Steps until a budget, the patience or a signal stops them; returns what stopped them."""
        c = self.config
        loader = sampled_loader(self.data, self.batches, num_workers=self.num_workers)
        batches = iter(loader)
        while (reason := self._stop_reason(asked)) is None:
            t0 = time.monotonic()
            deadline = None if c.seconds is None else t0 + c.seconds - self._elapsed()
            loss = self._step(batches, deadline)
            if loss is None:
                reason = "seconds"
                break
            took = time.monotonic() - t0
            self.step_s = took if self.step_s is None else 0.7 * self.step_s + 0.3 * took
            if c.eval_every and self.run.step % c.eval_every == 0:
                self._evaluate(loss)
                self._save()
            self._show(loss)
        del batches, loader  # decoding workers end here
        if reason in ("sigterm", "interrupt"):
            raise self._interrupted(reason)
        return reason

    def _show(self, loss: float) -> None:
        """Advance the bar by a step; its length is re-estimated when the time budget will end the run first."""
        p, c = self.progress, self.config
        if p is None:
            return
        if c.seconds is not None and self.step_s and hasattr(p, "set_total"):
            left = c.seconds - self._elapsed()
            by_time = self.run.step + max(0, int(left / (self.step_s + (self.eval_s or 0.0) / max(1, c.eval_every or 1))))
            p.set_total(min(by_time, self.horizon) if self.horizon else by_time)
        last = self.run.history[-1] if self.run.history else None
        if hasattr(p, "describe"):
            agree = f", held-out agreement {100 * last['agreement']:.1f} %" if last else ""
            p.describe(f"fine-tuning: loss {loss:.4g}{agree}")
        p.advance(1)

    def fit(self) -> TrainResult:
        c = self.config
        resumed = (
            None if self.resume is None else saved.load(self.resume, self.parts, self.student, self.opt, self.schedule, self.ema)
        )
        self.run = resumed or saved.RunState()
        self.elapsed0 = self.run.elapsed
        t0 = time.monotonic()
        original = self.held.evaluate(self.teacher, -1)
        self._prior_step_time(time.monotonic() - t0)
        if resumed is None:
            self._evaluate(None)  # step 0: the patched model as given, the first candidate for "best"
        self.batches = Batches(self.train_pos, c, self.rank, self.world, self.run.step, self.horizon)
        unit = getattr(self.progress, "unit", None)
        if self.progress is not None:
            self.progress.unit = "steps"  # the CLI's bar counts images unless told; given back after
            self.progress.start(self.horizon or 0, "fine-tuning the patched model")
            if self.run.step:
                self.progress.advance(self.run.step)
        self.clock0 = time.monotonic()
        try:
            with stop_requests() as asked:
                reason = self._loop(asked)
        finally:
            if self.progress is not None:
                self.progress.stop()
                self.progress.unit = unit
        self.elapsed0, self.clock0 = self._elapsed(), None  # the budget's clock stops with the loop
        if self.run.history[-1]["step"] != self.run.step:
            self._evaluate(self.run.losses[-1] if self.run.losses else None)
        self._save()
        return self._finish(reason, original)

    def _finish(self, reason: str, original: Evaluation) -> TrainResult:
        """Load the best evaluation's weights into the student and say what the run did."""
        c, run = self.config, self.run
        self.student.load_state_dict(run.best_weights)
        self.student.eval()
        before = Evaluation(**run.history[0])
        after = Evaluation(**[h for h in run.history if h["step"] == run.best_step][-1])
        tail = run.losses[-10:] or [float("nan")]
        return TrainResult(
            steps=run.step,
            seconds=run.elapsed,
            stopped_by=reason,
            train_images=len(self.train_pos),
            heldout_images=self.held.readable,
            batch_size=c.batch_size,
            temperature=c.temperature,
            lr=c.lr,
            bn=c.bn,
            seed=c.seed,
            loss_first=run.losses[0] if run.losses else float("nan"),
            loss_last=sum(tail) / len(tail),
            agreement_before=before.agreement,
            agreement_after=after.agreement,
            shifted_agreement_before=before.shifted_agreement,
            shifted_agreement_after=after.shifted_agreement,
            consistency_before=before.consistency,
            consistency_after=after.consistency,
            teacher_consistency=original.consistency,
            accuracy_before=before.accuracy,
            accuracy_after=after.accuracy,
            best_step=run.best_step,
            epochs=run.step / self.per_epoch,
            processes=self.world,
            resumed_at_step=run.resumed_at,
            settings=c.to_json(),
            history=run.history,
            notes=self.notes,
        )


def finetune(
    teacher: nn.Module,
    student: nn.Module,
    data: Any,
    config: TrainConfig | None = None,
    *,
    device: str | torch.device = "cpu",
    resume: Any = None,
    num_workers: int = 0,
    progress: Any = None,
) -> TrainResult:
    """Fine-tune ``student`` (in place) towards ``teacher`` on the images of ``data`` (an
    :class:`~shiftaudit.data.AuditDataset`); the student ends with the best held-out evaluation's weights, in eval
    mode. ``resume``: a state file saved as the run goes and continued from when it exists (see
    :mod:`shiftaudit.training.state`). Under ``torchrun`` every process calls this with the same arguments.
    ``progress``: ``start(total, description)``, ``advance(n)``, ``stop()`` (counts steps), optionally
    ``set_total(n)`` and ``describe(text)``."""
    config = config or TrainConfig()
    trainer = Trainer(
        teacher, student, data, config, torch.device(device), None if resume is None else Path(resume), num_workers, progress
    )
    try:
        return trainer.fit()
    finally:
        for p in student.parameters():
            p.requires_grad_(True)
