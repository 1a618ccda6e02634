"""What a patch does, as a small JSON-able spec: saved in a patched checkpoint so the model can be rebuilt exactly.

The registry of patch methods the spec names lives here too (:class:`PatchMethod`, :func:`register_patch_method`);
the built-in methods register in :mod:`shiftaudit.antialias.methods`, which the package imports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from shiftaudit.antialias.blurpool import normalize_pad_mode
from shiftaudit.antialias.filters import canonical_filter_name
from shiftaudit.errors import UsageError

SPEC_VERSION = 1


@dataclass(frozen=True)
class PatchConfig:
    """Options of ``shiftaudit patch``. ``method``: ``blurpool`` (blur, then subsample at phase 0) or ``aps``
    (adaptive polyphase sampling, optionally after a blur); ``stem``: also blur the strided conv that reads the pixels
    (the costliest); ``shortcuts``: blur before strided 1x1 shortcut convs; ``circular_conv``: make every conv's padding circular
    (the paper's clean testbed); ``only``/``skip``: module names or globs (a name also matches everything under it)."""

    method: str = "blurpool"
    filter: str | None = None  # default: tri3 for blurpool, delta (no blur) for aps
    pad: str = "reflect"
    stem: bool = False
    shortcuts: bool = True
    pools: bool = True
    convs: bool = True
    circular_conv: bool = False
    only: tuple[str, ...] = field(default_factory=tuple)
    skip: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        default = get_patch_method(self.method).default_filter
        object.__setattr__(self, "filter", canonical_filter_name(self.filter or default))
        object.__setattr__(self, "pad", normalize_pad_mode(self.pad))
        object.__setattr__(self, "only", tuple(self.only))
        object.__setattr__(self, "skip", tuple(self.skip))

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["only"] = list(self.only)
        d["skip"] = list(self.skip)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PatchConfig:
        if not isinstance(d, dict):
            raise UsageError("A patch spec must be a JSON object.")
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for key in ("only", "skip"):
            if key in known:
                if not isinstance(known[key], (list, tuple)) or not all(isinstance(v, str) for v in known[key]):
                    raise UsageError(f"Patch spec field {key!r} must be a list of module names.")
                known[key] = tuple(known[key])
        for key in ("stem", "shortcuts", "pools", "convs", "circular_conv"):
            if key in known and not isinstance(known[key], bool):
                raise UsageError(f"Patch spec field {key!r} must be true or false.")
        for key in ("method", "pad"):
            if key in known and not isinstance(known[key], str):
                raise UsageError(f"Patch spec field {key!r} must be a string.")
        if "filter" in known and known["filter"] is not None and not isinstance(known["filter"], str):
            raise UsageError("Patch spec field 'filter' must be a string.")
        return cls(**known)


@dataclass(frozen=True)
class PatchMethod:
    name: str
    label: str  # in rules: "MaxPool(s2) -> MaxPool(s1) + BlurPool(s2)"
    short: str  # in actions: "dense pool + blur"
    default_filter: str
    default_pad: str
    make: Callable[[PatchConfig, int | None, int], nn.Module]  # (config, channels, stride) -> subsampling layer
    finish: Callable[[nn.Module, list[Any]], list[str]] | None = None  # (patched model, steps) -> notes


_METHODS: dict[str, PatchMethod] = {}


def register_patch_method(method: PatchMethod) -> PatchMethod:
    _METHODS[method.name] = method
    return method


def patch_method_names() -> tuple[str, ...]:
    return tuple(_METHODS)


def get_patch_method(name: str) -> PatchMethod:
    try:
        return _METHODS[name]
    except (KeyError, TypeError):
        raise UsageError(f"Unknown patch method {name!r}; choose one of: {', '.join(_METHODS)}.") from None
