"""The fixed choices of the command line, as enums made from the library's own names (registries and tuples):
Typer lists them in ``--help`` and refuses any other value (exit 2, naming the option) before a command starts.
Commands pass ``.value`` on: the library keeps taking strings."""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Any

from shiftaudit.antialias.blurpool import PAD_MODES
from shiftaudit.antialias.methods import patch_method_names
from shiftaudit.data import data_kind_names
from shiftaudit.data.presets import PRESETS
from shiftaudit.engine.config import MODES, PRECISIONS, backend_names
from shiftaudit.loading.saving import FORMATS
from shiftaudit.shifts.modes import shift_mode_names
from shiftaudit.training.config import AUGMENTS, BN_POLICIES


def _choices(name: str, names: tuple[str, ...]) -> Any:
    """An enum of the names the library takes when the CLI starts (registries: built-ins and plug-ins)."""
    return Enum(name, {n: n for n in names}, type=str)


if TYPE_CHECKING:  # for type checkers, the members the CLI names; at run time every name the library takes

    class ShiftMode(str, Enum):
        circular = "circular"

    class PatchMethod(str, Enum):
        blurpool = "blurpool"

    class Mode(str, Enum):
        auto = "auto"

    class Precision(str, Enum):
        fp32 = "fp32"

    class BackendChoice(str, Enum):
        torch = "torch"

    class DataKind(str, Enum):
        auto = "auto"

    class Preset(str, Enum): ...

    class Pad(str, Enum): ...

    class ModelFormat(str, Enum):
        safetensors = "safetensors"
        pt2 = "pt2"

    class Augment(str, Enum):
        none = "none"

    class BatchNormPolicy(str, Enum):
        frozen = "frozen"

else:
    ShiftMode = _choices("ShiftMode", shift_mode_names())
    PatchMethod = _choices("PatchMethod", patch_method_names())
    Mode = _choices("Mode", MODES)
    Precision = _choices("Precision", PRECISIONS)
    BackendChoice = _choices("BackendChoice", backend_names())
    DataKind = _choices("DataKind", ("auto", *data_kind_names()))
    Preset = _choices("Preset", tuple(PRESETS))
    Pad = _choices("Pad", PAD_MODES)
    ModelFormat = _choices("ModelFormat", FORMATS)
    Augment = _choices("Augment", AUGMENTS)
    BatchNormPolicy = _choices("BatchNormPolicy", BN_POLICIES)


def value(choice: Enum | None) -> str | None:
    """The plain string the library takes (None stays None)."""
    return None if choice is None else str(choice.value)
