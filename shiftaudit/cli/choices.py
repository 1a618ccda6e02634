"""The fixed choices of the command line, as enums: Typer lists them in ``--help`` and refuses any other value
(exit 2, naming the option) before a command starts. Commands pass ``.value`` on: the library keeps taking strings."""

from __future__ import annotations

from enum import Enum


class ShiftMode(str, Enum):
    circular = "circular"
    crop = "crop"
    subpixel = "subpixel"


class Mode(str, Enum):
    auto = "auto"
    exhaustive = "exhaustive"
    sampled = "sampled"


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class DataKind(str, Enum):
    auto = "auto"
    imagefolder = "imagefolder"
    folder = "folder"
    cifar10 = "cifar10"
    tensors = "tensors"


class Preset(str, Enum):
    imagenet = "imagenet"
    cifar = "cifar"


class PatchMethod(str, Enum):
    blurpool = "blurpool"
    aps = "aps"


class Pad(str, Enum):
    reflect = "reflect"
    zero = "zero"
    circular = "circular"
    replicate = "replicate"


class ModelFormat(str, Enum):
    safetensors = "safetensors"
    torchscript = "torchscript"


def value(choice: Enum | None) -> str | None:
    """The plain string the library takes (None stays None)."""
    return None if choice is None else str(choice.value)
