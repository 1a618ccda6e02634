"""Preprocessing presets: how raw images become the tensors a model was trained on.

Shifts are applied to the *preprocessed* tensor (the paper's Eq. 4 acts on the network input), so the
preset fixes the input size H x W and with it the shift set.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from shiftaudit.errors import UsageError
from shiftaudit.limits import MAX_SIDE

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class Preprocessing:
    """Resize (shorter side to ``resize``) then centre-crop to ``size``, scale to [0, 1], normalise."""

    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: int | None = None
    name: str = "custom"

    def __post_init__(self) -> None:
        if len(self.size) != 2 or min(self.size) < 1:
            raise UsageError(f"Image size must be two positive integers, got {self.size}.")
        if max(self.size) > MAX_SIDE:  # every image is preprocessed to this size: bound what it allocates
            raise UsageError(f"--size {max(self.size)} is more than the {MAX_SIDE} px allowed per side.")
        if self.resize is not None and not 1 <= self.resize <= MAX_SIDE:
            raise UsageError(f"--resize must be between 1 and {MAX_SIDE} px, got {self.resize}.")
        if len(self.mean) != len(self.std):
            raise UsageError("--mean and --std must have the same number of values.")
        if not all(math.isfinite(v) for v in (*self.mean, *self.std)):
            raise UsageError("Every --mean and --std value must be a finite number (not nan or inf).")
        if any(s <= 0 for s in self.std):
            raise UsageError("Every --std value must be positive.")

    @property
    def channels(self) -> int:
        return len(self.mean)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Preprocessing:
        try:
            return cls(
                size=(int(d["size"][0]), int(d["size"][1])),
                mean=tuple(float(v) for v in d["mean"]),
                std=tuple(float(v) for v in d["std"]),
                resize=None if d.get("resize") is None else int(d["resize"]),
                name=str(d.get("name", "custom")),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise UsageError(f"Invalid preprocessing description {d!r}: {exc}.") from None


PRESETS: dict[str, Preprocessing] = {
    "imagenet": Preprocessing(size=(224, 224), resize=256, mean=IMAGENET_MEAN, std=IMAGENET_STD, name="imagenet"),
    "cifar": Preprocessing(size=(32, 32), resize=None, mean=CIFAR_MEAN, std=CIFAR_STD, name="cifar"),
}


def get_preset(name: str) -> Preprocessing:
    try:
        return PRESETS[name]
    except KeyError:
        raise UsageError(f"Unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}.") from None


def resolve_preprocessing(
    preset: str | None = None,
    *,
    size: int | tuple[int, int] | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    resize: int | None = None,
    default: Preprocessing | None = None,
) -> Preprocessing:
    """Combine a preset (or the checkpoint's own preprocessing, ``default``) with explicit overrides."""
    base = get_preset(preset) if preset else default
    if base is None and size is None:
        base = PRESETS["imagenet"]
    if size is not None:
        hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    else:
        assert base is not None
        hw = base.size
    if base is None:
        base = Preprocessing(size=hw, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    changed = size is not None or mean is not None or std is not None or resize is not None
    return Preprocessing(
        size=hw,
        mean=tuple(mean) if mean is not None else base.mean,
        std=tuple(std) if std is not None else base.std,
        resize=resize if resize is not None else (base.resize if size is None else None),
        name=base.name if not changed else "custom",
    )
