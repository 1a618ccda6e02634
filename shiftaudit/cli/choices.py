"""The fixed choices of the command line, as enums: Typer lists them in ``--help`` and refuses any other value
(exit 2, naming the option) before a command starts. Commands pass ``.value`` on: the library keeps taking strings."""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Any

from shiftaudit.antialias.methods import patch_method_names
from shiftaudit.shifts.modes import shift_mode_names


def _registered(name: str, names: tuple[str, ...]) -> Any:
    """An enum of what a registry holds when the CLI starts (built-in and plug-in shift modes, patch methods)."""
    return Enum(name, {n: n for n in names}, type=str)


if TYPE_CHECKING:  # the built-in members, for type checkers; at run time the registry's (plug-ins included)

    class ShiftMode(str, Enum):
        circular = "circular"
        crop = "crop"
        subpixel = "subpixel"

    class PatchMethod(str, Enum):
        blurpool = "blurpool"
        aps = "aps"

else:
    ShiftMode = _registered("ShiftMode", shift_mode_names())
    PatchMethod = _registered("PatchMethod", patch_method_names())


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
    hf = "hf"
    webdataset = "webdataset"


class Preset(str, Enum):
    imagenet = "imagenet"
    cifar = "cifar"


class Pad(str, Enum):
    reflect = "reflect"
    zero = "zero"
    circular = "circular"
    replicate = "replicate"


class ModelFormat(str, Enum):
    safetensors = "safetensors"
    pt2 = "pt2"
    torchscript = "torchscript"


def value(choice: Enum | None) -> str | None:
    """The plain string the library takes (None stays None)."""
    return None if choice is None else str(choice.value)
