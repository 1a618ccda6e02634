"""VGG-13 for 32x32 CIFAR images, as in the paper's CIFAR experiments (§4.2 of Zhang 2019).

Five stages of 3x3 conv-BN-ReLU with max-pooling (64,64 M 128,128 M 256,256 M 512,512 M 512,512 M): after the
fifth pooling a 32x32 input is 1x1x512, classified by one linear layer. ``circular=True`` gives every conv circular
padding, the paper's clean testbed where circular shifts meet no border, so only the network's own aliasing shows.
"""

from __future__ import annotations

import torch
from torch import nn

VGG13_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGGCifar(nn.Module):
    """``features`` (conv-BN-ReLU and max-pool layers) then ``classifier`` (one linear layer on the 512 features)."""

    def __init__(self, cfg: tuple[int | str, ...], num_classes: int = 10, circular: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            layers += [
                nn.Conv2d(c, int(v), kernel_size=3, padding=1, padding_mode="circular" if circular else "zeros"),
                nn.BatchNorm2d(int(v)),
                nn.ReLU(inplace=True),
            ]
            c = int(v)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def vgg13_cifar(num_classes: int = 10, circular: bool = False) -> nn.Module:
    """VGG-13 with batch norm for 32x32 inputs; ``circular`` sets ``padding_mode="circular"`` on every conv."""
    return VGGCifar(VGG13_CFG, num_classes=num_classes, circular=circular)
