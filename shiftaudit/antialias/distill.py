"""Label-free distillation: fine-tune the patched model to agree with the original, under shifts.

Patching keeps every weight, but a blur the network was never trained with changes what every later layer sees; on
a real pretrained network post-hoc blurring can cost most of the accuracy. The paper trains with the blur in place
(full ImageNet training). Here the original model is the teacher and needs no labels: the patched model (the
student) sees a randomly circularly shifted copy of each unlabelled image and is trained to match the teacher's
softened output on the unshifted image (KL divergence at temperature T, times T^2). Matching the teacher on the
image as given keeps accuracy; matching it at every shift teaches the student the invariance the blur makes
possible, so the consistency gain is kept.

Choices (measured on the packaged demo model; see docs/patching.md):

- every parameter is trained, with Adam at a small learning rate (1e-3 by default; the blur changes the inputs of
  every layer after it, so no single layer can absorb the change);
- BatchNorm layers are kept in eval mode ("frozen" running statistics; their affine weights still train): a
  small unlabelled set gives noisy batch statistics, and train-mode BN would also make the held-out agreement
  depend on the batch. ``bn="train"`` re-estimates them while training instead;
- a seeded share of the images (20 %, at least one, at most 512) is held out; top-1 agreement with the teacher on
  it is measured before and after, at zero shift (the accuracy the user sees) and at one random shift per image;
- deterministic on a CPU for a given seed: the split, the batches and the shifts come from one seeded generator.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from shiftaudit.errors import UsageError


@dataclass(frozen=True)
class DistillResult:
    """What a distillation run did. Agreements are top-1 agreement with the teacher on the held-out images: at zero
    shift, and with the student seeing one random circular shift per image (the teacher the image as given)."""

    steps: int
    seconds: float
    stopped_by: str  # "steps" or "seconds"
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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _images(data: Any, indices: list[int]) -> torch.Tensor:
    return torch.stack([data[i][0] for i in indices])


def random_shifts(images: torch.Tensor, max_shift: int | None, gen: torch.Generator) -> torch.Tensor:
    """Each image circularly shifted by its own offset, uniform in [-max_shift, max_shift]^2 (every offset when
    None)."""
    n, _, h, w = images.shape
    if max_shift is None:
        dh = torch.randint(0, h, (n,), generator=gen)
        dw = torch.randint(0, w, (n,), generator=gen)
    else:
        dh = torch.randint(-max_shift, max_shift + 1, (n,), generator=gen)
        dw = torch.randint(-max_shift, max_shift + 1, (n,), generator=gen)
    return torch.stack([torch.roll(x, (int(a), int(b)), (-2, -1)) for x, a, b in zip(images, dh, dw)])


@torch.no_grad()
def _agreement(
    teacher: nn.Module,
    student: nn.Module,
    images: torch.Tensor,
    *,
    batch_size: int,
    device: str | torch.device,
    dtype: torch.dtype,
    max_shift: int | None,
    gen: torch.Generator,
) -> tuple[float, float]:
    same = same_shifted = 0
    for s in range(0, images.shape[0], batch_size):
        x = images[s : s + batch_size].to(device, dtype=dtype)
        t = teacher(x).argmax(1)
        same += int((student(x).argmax(1) == t).sum())
        xs = random_shifts(x.cpu(), max_shift, gen).to(device, dtype=dtype)
        same_shifted += int((student(xs).argmax(1) == t).sum())
    n = max(1, images.shape[0])
    return same / n, same_shifted / n


def heldout_split(n: int, seed: int, fraction: float = 0.2, most: int = 512) -> tuple[list[int], list[int]]:
    """(train, held-out) indices of ``n`` images, split by a permutation drawn with ``seed``."""
    if n < 2:
        raise UsageError(f"Distillation needs at least 2 images (some to train on, some held out), got {n}.")
    k = min(most, max(1, int(round(n * fraction))), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(perm[k:]), sorted(perm[:k])


def _check_settings(steps: int | None, seconds: float | None, bn: str, temperature: float, lr: float, batch_size: int) -> None:
    """Refuse a budget or setting that cannot train, before any image is read."""
    if steps is None and seconds is None:
        raise UsageError("Distillation needs a budget: a number of steps, a number of seconds, or both.")
    if steps is not None and steps < 1:
        raise UsageError(f"--distill-steps must be at least 1, got {steps}.")
    if seconds is not None and seconds <= 0:
        raise UsageError(f"--distill-seconds must be positive, got {seconds}.")
    if bn not in ("frozen", "train"):
        raise UsageError(f"bn must be 'frozen' or 'train', got {bn!r}.")
    if temperature <= 0 or lr <= 0 or batch_size < 1:
        raise UsageError("Distillation needs a positive temperature, learning rate and batch size.")


def _readable_split(data: Any, seed: int, heldout_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The training and held-out images, preprocessed once and kept (a few hundred small images); unreadable ones
    (NaN) are dropped."""
    train_idx, held_idx = heldout_split(len(data), seed, heldout_fraction)
    train = _images(data, train_idx)
    held = _images(data, held_idx)
    train = train[~torch.isnan(train).flatten(1).any(1)]
    held = held[~torch.isnan(held).flatten(1).any(1)]
    if train.shape[0] == 0 or held.shape[0] == 0:
        raise UsageError("No readable images to distill on.")
    return train, held


def _train(
    teacher: nn.Module,
    student: nn.Module,
    train: torch.Tensor,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    *,
    steps: int | None,
    seconds: float | None,
    batch_size: int,
    max_shift: int | None,
    temperature: float,
    bn: str,
    device: torch.device,
    dtype: torch.dtype,
    seed: int,
    progress: Any,
) -> tuple[list[float], int, str, float]:
    """Optimiser steps on shuffled batches until the budget runs out; the student is left in eval mode with its
    parameters frozen, whatever happens. Returns the losses, the steps done, what stopped them and the seconds."""
    losses: list[float] = []
    t0 = time.monotonic()
    done = 0
    stopped_by = "steps"
    order = torch.randperm(train.shape[0], generator=gen)
    pos = 0
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # dropout or any other randomness inside the model
            while steps is None or done < steps:
                if seconds is not None and time.monotonic() - t0 >= seconds:
                    stopped_by = "seconds"
                    break
                if pos + batch_size > order.numel():
                    order, pos = torch.randperm(train.shape[0], generator=gen), 0
                idx = order[pos : pos + batch_size]
                pos += batch_size
                x = train[idx]
                losses.append(
                    _step(
                        teacher,
                        student,
                        x,
                        opt,
                        gen,
                        max_shift=max_shift,
                        temperature=temperature,
                        bn=bn,
                        device=device,
                        dtype=dtype,
                    )
                )
                done += 1
                if progress is not None:
                    progress.advance(x.shape[0])
    finally:
        student.eval()
        for p in student.parameters():
            p.requires_grad_(False)
        if progress is not None:
            progress.stop()
    return losses, done, stopped_by, time.monotonic() - t0


def _step(
    teacher: nn.Module,
    student: nn.Module,
    x: torch.Tensor,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    *,
    max_shift: int | None,
    temperature: float,
    bn: str,
    device: torch.device,
    dtype: torch.dtype,
) -> float:
    """One optimiser step: the student sees randomly shifted images and learns the teacher's softened outputs on the
    unshifted ones. Returns the loss."""
    xs = random_shifts(x, max_shift, gen).to(device, dtype=dtype)
    with torch.no_grad():
        target = F.log_softmax(teacher(x.to(device, dtype=dtype)).float() / temperature, dim=1)
    student.train(bn == "train")
    out = student(xs).float()
    loss = F.kl_div(F.log_softmax(out / temperature, dim=1), target, log_target=True, reduction="batchmean") * temperature**2
    if not math.isfinite(float(loss.detach())):
        raise UsageError("Distillation diverged (a non-finite loss); try a smaller --distill-lr.")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


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
) -> DistillResult:
    """Fine-tune ``student`` (in place) to match ``teacher`` on the images of ``data`` (an
    :class:`~shiftaudit.data.AuditDataset` or any sequence of ``(image, label)``; labels are ignored).

    Stops after ``steps`` optimiser steps or ``seconds`` of training, whichever comes first (at least one must be
    given). ``max_shift``: the student's random circular shifts are drawn from ``[-max_shift, max_shift]^2`` (all
    offsets when None). ``progress``: an object with ``start(total, description)``, ``advance(n)``, ``stop()``
    (counts images). Returns a :class:`DistillResult`; the student is left in eval mode."""
    _check_settings(steps, seconds, bn, temperature, lr, batch_size)
    device = torch.device(device)
    train, held = _readable_split(data, seed, heldout_fraction)
    teacher = teacher.to(device).eval().requires_grad_(False)
    student = student.to(device)
    dtype = next((p.dtype for p in student.parameters() if p.is_floating_point()), torch.float32)
    gen = torch.Generator().manual_seed(seed)
    eval_seed = seed + 1  # the same held-out shifts before and after
    student.eval()
    held_agreement = functools.partial(  # the same held-out images and shifts before and after
        _agreement, teacher, student, held, batch_size=batch_size, device=device, dtype=dtype, max_shift=max_shift
    )
    before = held_agreement(gen=torch.Generator().manual_seed(eval_seed))
    params = [p for p in student.parameters() if p.is_floating_point()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    total = steps if steps is not None else 0
    if progress is not None:
        progress.start(total * batch_size if total else 0, "distilling the patched model")
    losses, done, stopped_by, secs = _train(
        teacher,
        student,
        train,
        opt,
        gen,
        steps=steps,
        seconds=seconds,
        batch_size=batch_size,
        max_shift=max_shift,
        temperature=temperature,
        bn=bn,
        device=device,
        dtype=dtype,
        seed=seed,
        progress=progress,
    )
    after = held_agreement(gen=torch.Generator().manual_seed(eval_seed))
    for p in student.parameters():
        p.requires_grad_(True)
    tail = losses[-10:] or [float("nan")]
    return DistillResult(
        steps=done,
        seconds=secs,
        stopped_by=stopped_by,
        train_images=int(train.shape[0]),
        heldout_images=int(held.shape[0]),
        batch_size=batch_size,
        temperature=temperature,
        lr=lr,
        bn=bn,
        seed=seed,
        loss_first=losses[0] if losses else float("nan"),
        loss_last=sum(tail) / len(tail),
        agreement_before=before[0],
        agreement_after=after[0],
        shifted_agreement_before=before[1],
        shifted_agreement_after=after[1],
    )
