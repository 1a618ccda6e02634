"""BatchNorm re-calibration: blurring changes the statistics the BatchNorm layers after a blur see; re-estimate those.

Patching a trained model keeps its weights, but the features after a blur are smoother than the ones the
BatchNorm layers there were fitted to. Only those layers are re-estimated: a BatchNorm that runs before the first
inserted blur sees exactly what it saw in training, and re-estimating it on a few images only adds noise (on a real
pretrained network, re-estimating every BatchNorm of the *unpatched* model on a few dozen images cost a third of
its accuracy).

The rule ("downstream of a change"): a BatchNorm is re-estimated when the patched model's forward pass calls it
after it has called the first inserted blur (``BlurPool2d`` or ``APSDown2d``). In a chain of layers this is exactly
the set of layers the blur feeds; in a network with branches it can include a parallel branch that runs later, a
superset that errs towards re-estimating. The calibration images are drawn in a seeded random order (an image
folder lists its classes one after the other: its first N images are a few classes only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from shiftaudit.antialias.aps import APSDown2d
from shiftaudit.antialias.blurpool import BlurPool2d
from shiftaudit.engine.forward import model_exits_fail

SMALL_CALIBRATION = 256
"""Fewer calibration images than this draw a warning: batch statistics on a few images are noisy."""


@dataclass(frozen=True)
class Recalibration:
    """What a re-calibration did: the images it used and the BatchNorm layers it re-estimated."""

    images: int = 0
    layers: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"images": self.images, "layers": list(self.layers)}


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def _is_change(m: nn.Module) -> bool:
    return isinstance(m, (BlurPool2d, APSDown2d))


@torch.no_grad()
def downstream_batchnorms(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the BatchNorm layers the forward pass on ``example`` calls after its first inserted blur, in call
    order (empty when the model has no blur)."""
    names = {id(m): n for n, m in model.named_modules()}
    order: list[nn.Module] = []
    seen_change = [False]
    hooks = []

    def hook(mod: nn.Module, _args: Any) -> None:
        if _is_change(mod):
            seen_change[0] = True
        elif seen_change[0] and isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.track_running_stats and mod not in order:
            order.append(mod)

    for m in model.modules():
        if _is_change(m) or isinstance(m, nn.modules.batchnorm._BatchNorm):
            hooks.append(m.register_forward_pre_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with model_exits_fail("The model failed while finding the BatchNorm layers after the blur"):
            model(example)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return [names[id(m)] for m in order]


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module,
    data: Any,
    *,
    num_images: int,
    batch_size: int = 32,
    seed: int = 0,
    layers: str | list[str] = "downstream",
    device: str | torch.device = "cpu",
    progress: Any = None,
) -> Recalibration:
    """Reset and re-estimate (cumulative average) the running statistics of the BatchNorm layers downstream of the
    patch (``layers="downstream"``, see the module notes), of every BatchNorm (``layers="all"``) or of the named
    ones (a list: the "baseline recalibrated" control re-estimates, on the unpatched model, the layers the patched
    model had re-estimated, to show what re-estimation alone does), on ``num_images`` images of ``data`` (an
    :class:`~shiftaudit.data.AuditDataset`; labels unused) drawn in a random order seeded by ``seed``.
    Returns a :class:`Recalibration` (images used, layers re-estimated)."""
    if isinstance(layers, str) and layers not in ("downstream", "all"):
        raise ValueError(f"layers must be 'downstream', 'all' or a list of names, got {layers!r}")
    if num_images <= 0 or len(data) == 0:
        return Recalibration()
    n = min(num_images, len(data))
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    model.to(device)
    named = dict(model.named_modules())
    if not isinstance(layers, str):
        chosen = [n_ for n_ in layers if isinstance(named.get(n_), nn.modules.batchnorm._BatchNorm)]
    elif layers == "all":
        chosen = [
            n_ for n_, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        ]
    else:
        chosen = downstream_batchnorms(model, data[order[0]][0][None].to(device, dtype=dtype))
    bns = [named[c] for c in chosen]
    if not bns:
        return Recalibration()
    momenta = [m.momentum for m in bns]
    was_training = model.training
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every image weighs the same
        m.train()
    seen = 0
    if progress is not None:
        progress.start(n, "re-estimating BatchNorm statistics")
    try:
        for s in range(0, n, batch_size):
            idx = order[s : s + batch_size]
            if len(idx) < 2 and seen > 0:
                break  # a batch of one gives no variance; the statistics so far stand
            images = torch.stack([data[i][0] for i in idx])
            with model_exits_fail("The model failed while re-estimating BatchNorm statistics"):
                model(images.to(device, dtype=dtype))
            seen += len(idx)
            if progress is not None:
                progress.advance(len(idx))
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.train(was_training)
        if progress is not None:
            progress.stop()
    return Recalibration(images=seen, layers=chosen)


@torch.no_grad()
def top1_predictions(model: nn.Module, data: Any, *, batch_size: int = 64, device: str | torch.device = "cpu") -> torch.Tensor:
    """``model``'s top-1 class on each image of ``data`` at zero shift, -1 for an image with NaN pixels (skipped)."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    model = model.to(device).eval()
    preds = torch.full((len(data),), -1, dtype=torch.long)
    for s in range(0, len(data), batch_size):
        x = torch.stack([data[i][0] for i in range(s, min(len(data), s + batch_size))])
        keep = ~torch.isnan(x).flatten(1).any(1)
        if not bool(keep.any()):
            continue
        with model_exits_fail("The model failed while comparing the patched model with the original"):
            out = model(x[keep].to(device, dtype=dtype)).argmax(1).cpu()
        preds[s : s + x.shape[0]][keep] = out
    return preds


def agreement_of(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of the images both predictions cover (not -1) on which they name the same class."""
    valid = (a >= 0) & (b >= 0)
    total = int(valid.sum())
    return int((a[valid] == b[valid]).sum()) / total if total else float("nan")


def top1_agreement(a: nn.Module, b: nn.Module, data: Any, *, batch_size: int = 64, device: str | torch.device = "cpu") -> float:
    """Share of the images of ``data`` (at zero shift) on which ``a`` and ``b`` predict the same class."""
    pa = top1_predictions(a, data, batch_size=batch_size, device=device)
    return agreement_of(pa, top1_predictions(b, data, batch_size=batch_size, device=device))
