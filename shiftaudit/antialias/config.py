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


PLAN_VERSION = 1
PLAN_SPEC_VERSION = 2
"""A checkpoint patched by a per-point plan stores ``{"version": 2, "plan": ...}``: a shiftaudit that knows only the
one-config spec (version 1) then says "upgrade" instead of rebuilding another model."""


@dataclass(frozen=True)
class Treatment:
    """What one downsampling point gets: ``method`` (``blurpool`` or ``aps``) with its blur ``filter`` and padding
    (the method's defaults when left out)."""

    method: str = "blurpool"
    filter: str | None = None
    pad: str | None = None

    def __post_init__(self) -> None:
        method = get_patch_method(self.method)
        object.__setattr__(self, "filter", canonical_filter_name(self.filter or method.default_filter))
        object.__setattr__(self, "pad", normalize_pad_mode(self.pad or method.default_pad))

    @property
    def label(self) -> str:
        if self.method == "blurpool":
            return f"blur {self.filter}"
        return "APS" if self.filter == "delta" else f"APS {self.filter}"

    def config(self) -> PatchConfig:
        """The one-method config of this treatment (every kind of strided layer allowed: the plan names them)."""
        return PatchConfig(method=self.method, filter=self.filter, pad=str(self.pad), stem=True)

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "filter": self.filter, "pad": self.pad}

    @classmethod
    def from_json(cls, d: Any, where: str) -> Treatment:
        if not isinstance(d, dict) or set(d) - {"method", "filter", "pad"}:
            raise UsageError(f"The plan's treatment of {where!r} must be an object with method, filter and pad only.")
        if not all(isinstance(v, str) for v in d.values()):
            raise UsageError(f"The plan's treatment of {where!r} must give method, filter and pad as strings.")
        return cls(**d)


def _layer_order(name: str) -> list[tuple[int, int, str]]:
    """``features.6`` before ``features.13``: numbered parts by number, as the model lists its layers."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in name.split(".")]


@dataclass(frozen=True)
class PatchPlan:
    """A per-point patch: each named strided layer gets its own :class:`Treatment`; every other one is left as it is.
    ``shiftaudit patch --search`` chooses one, ``patch --plan FILE`` applies it, and a patched checkpoint stores it."""

    points: tuple[tuple[str, Treatment], ...] = ()

    def __post_init__(self) -> None:
        points = dict(self.points)
        if len(points) != len(self.points):
            raise UsageError("A patch plan names a layer twice.")
        object.__setattr__(self, "points", tuple(sorted(points.items(), key=lambda item: _layer_order(item[0]))))

    @classmethod
    def of(cls, points: dict[str, Treatment]) -> PatchPlan:
        return cls(tuple(points.items()))

    def treatments(self) -> dict[str, Treatment]:
        return dict(self.points)

    def with_point(self, name: str, treatment: Treatment) -> PatchPlan:
        return PatchPlan.of({**self.treatments(), name: treatment})

    @property
    def label(self) -> str:
        return ", ".join(f"{n}: {t.label}" for n, t in self.points) or "no change"

    def to_json(self) -> dict[str, Any]:
        return {"version": PLAN_VERSION, "points": {n: t.to_json() for n, t in self.points}}

    @classmethod
    def from_json(cls, d: Any) -> PatchPlan:
        """Strict: a plan with an unknown field, a newer version or a malformed treatment is refused."""
        if not isinstance(d, dict) or set(d) - {"version", "points"} or not isinstance(d.get("points"), dict):
            raise UsageError("A patch plan must be a JSON object with `version` and `points` (layer name -> treatment).")
        version = d.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= PLAN_VERSION:
            raise UsageError(f"The patch plan has version {version!r}; this shiftaudit reads version {PLAN_VERSION}.")
        return cls.of({str(n): Treatment.from_json(t, str(n)) for n, t in d["points"].items()})
