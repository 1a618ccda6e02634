"""The built-in demo model: a small VGG-style CNN with max-pooling, trained without shift augmentation.

It is deliberately ordinary -- the kind of network the paper shows loses shift invariance through strided
pooling -- and small enough (~70k parameters) to audit on a CPU in seconds. ``scripts/train_demo.py`` trains it on
:func:`shiftaudit.data.synthetic.make_synthetic` images and writes ``shiftaudit/assets/demo.safetensors``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from torch import nn

DEMO_TRAIN_SEED = 1
"""Seed of the demo training images."""

DEMO_TEST_SEED = 90210
"""Seed of the demo test images (``shiftaudit demo`` audits these); disjoint from the training seed."""

DEMO_ARCH = "shiftaudit.models.demo:demo_cnn"
WIDTHS = (16, 32, 64)
PaddingMode = Literal["zeros", "reflect", "replicate", "circular"]  # nn.Conv2d's padding_mode


def _stage(c_in: int, c_out: int, padding_mode: PaddingMode) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False, padding_mode=padding_mode),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False, padding_mode=padding_mode),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    ]


def demo_cnn(num_classes: int = 10, padding_mode: PaddingMode = "circular") -> nn.Module:
    """Three stages of (conv-BN-ReLU) x 2 + MaxPool2d(2), then global average pooling and a linear classifier.

    Convs pad circularly, as in the paper's experiments ("we use circular shifting and convolution"): under circular
    shifts the network is then exactly invariant to shifts by multiples of its total stride (8), and every
    inconsistency the demo shows comes from aliasing at the three subsampling steps, not from the border.
    """
    layers: list[nn.Module] = []
    c = 3
    for w in WIDTHS:
        layers += _stage(c, w, padding_mode)
        c = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    return nn.Sequential(*layers)


def demo_checkpoint_path() -> Path:
    """The packaged demo checkpoint (``shiftaudit/assets/demo.safetensors``)."""
    return Path(__file__).resolve().parent.parent / "assets" / "demo.safetensors"


def demo_aa_checkpoint_path() -> Path:
    """The packaged anti-aliased demo checkpoint (``shiftaudit/assets/demo_aa.safetensors``): the same network and
    training run as :func:`demo_checkpoint_path`, but with blur-before-subsampling in place from the start
    (``scripts/train_demo.py --antialias``). Its metadata carries the patch spec, so ``load_model`` rebuilds it."""
    return Path(__file__).resolve().parent.parent / "assets" / "demo_aa.safetensors"
