"""Model definitions that ship with shiftaudit: the demo CNN and the paper's VGG-13 for CIFAR."""

from __future__ import annotations

from shiftaudit.models.demo import DEMO_TEST_SEED, demo_aa_checkpoint_path, demo_checkpoint_path, demo_cnn
from shiftaudit.models.vgg_cifar import vgg13_cifar

__all__ = ["DEMO_TEST_SEED", "demo_aa_checkpoint_path", "demo_checkpoint_path", "demo_cnn", "vgg13_cifar"]
