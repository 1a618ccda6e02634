"""Small models and data shared by tests (made here, never downloaded)."""

from __future__ import annotations

from torch import nn


def tiny_cnn(num_classes: int = 5, padding_mode: str = "zeros", pool: bool = True, spatial_head: bool = False,
             size: int = 12) -> nn.Module:
    """A small conv net. With ``pool`` it downsamples (so it is not shift-invariant); ``spatial_head`` classifies the
    flattened feature map instead of its global average, which makes predictions depend strongly on position."""
    layers: list[nn.Module] = [nn.Conv2d(3, 8, 3, padding=1, padding_mode=padding_mode), nn.ReLU()]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.Conv2d(8, 12, 3, padding=1, padding_mode=padding_mode), nn.ReLU()]
    if pool:
        layers.append(nn.MaxPool2d(2))
    if spatial_head:
        side = size // 4 if pool else size
        layers += [nn.Flatten(), nn.Linear(12 * side * side, num_classes)]
    else:
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, num_classes)]
    return nn.Sequential(*layers)
