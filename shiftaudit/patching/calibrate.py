"""BatchNorm re-calibration: blurring changes the statistics each BatchNorm sees, so re-estimate them.

Patching a trained model keeps its weights, but the features after a blur are smoother than the ones the
BatchNorm layers were fitted to. Re-estimating the running mean/variance on a few hundred unlabelled images
recovers much of the accuracy that patching costs, with no training.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..forward import model_exits_fail


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, data: Any, *, num_images: int, batch_size: int = 32,
                          device: str | torch.device = "cpu", progress: Any = None) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them (cumulative average) on ``num_images``
    images of ``data`` (an :class:`~shiftaudit.data.AuditDataset`; labels unused). Returns the images used."""
    from ..data import make_loader

    bns = batchnorm_layers(model)
    if not bns or num_images <= 0:
        return 0
    momenta = [m.momentum for m in bns]
    was_training = model.training
    model.to(device).eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every image weighs the same
        m.train()
    seen = 0
    if progress is not None:
        progress.start(min(num_images, len(data)), "re-estimating BatchNorm statistics")
    try:
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        for images, _labels, _ids in make_loader(data, batch_size=batch_size):
            images = images[: num_images - seen]
            if images.shape[0] < 2 and seen > 0:
                break  # a batch of one gives no variance; the statistics so far stand
            with model_exits_fail("The model failed while re-estimating BatchNorm statistics"):
                model(images.to(device, dtype=dtype))
            seen += images.shape[0]
            if progress is not None:
                progress.advance(images.shape[0])
            if seen >= num_images:
                break
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.train(was_training)
        if progress is not None:
            progress.stop()
    return seen
