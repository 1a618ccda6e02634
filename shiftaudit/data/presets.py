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

    def describe(self) -> str:
        """In words, as the table header and the plan show it: "resize 297, centre crop 260x260, ImageNet mean/std"."""
        h, w = self.size
        steps = [f"resize {self.resize}" if self.resize is not None else "no resize", f"centre crop {h}x{w}"]
        return ", ".join(steps + [describe_statistics(self.mean, self.std)])

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


def describe_statistics(mean: tuple[float, ...], std: tuple[float, ...]) -> str:
    """``ImageNet mean/std``, ``CIFAR-10 mean/std``, ``mean 0.5, std 0.25`` (one value per channel when they differ)."""
    known: dict[tuple[tuple[float, ...], tuple[float, ...]], str] = {
        (IMAGENET_MEAN, IMAGENET_STD): "ImageNet mean/std",
        (CIFAR_MEAN, CIFAR_STD): "CIFAR-10 mean/std",
    }
    name = known.get((tuple(mean), tuple(std)))
    if name:
        return name

    def values(v: tuple[float, ...]) -> str:
        return f"{v[0]:g}" if len(set(v)) == 1 else ",".join(f"{x:g}" for x in v)

    return f"mean {values(mean)}, std {values(std)}"


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
    """Combine a preset (or the checkpoint's own preprocessing, ``default``; ImageNet's without either) with explicit
    overrides.

    A ``size`` without a ``resize`` keeps the base's crop fraction, as the model zoos do (timm's ``crop_pct``,
    torchvision's resize 256 / crop 224): the shorter side is resized to ``floor(size * base.resize / base.size)``
    (ImageNet: ``floor(size / 0.875)``, 297 for 260), then the centre ``size`` is cropped. A base without a resize
    (CIFAR: the images are the input size already) stays without one. A centre crop of the raw image, which a 480 px
    photo would turn into a small central patch, is never chosen silently: pass ``resize`` for another one.
    """
    base = get_preset(preset) if preset else default
    if size is not None:
        hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    else:
        hw = (base or PRESETS["imagenet"]).size
    frame = base or PRESETS["imagenet"]
    changed = size is not None or mean is not None or std is not None or resize is not None
    if resize is None:
        resize = crop_fraction_resize(hw, frame) if size is not None else frame.resize
    return Preprocessing(
        size=hw,
        mean=tuple(mean) if mean is not None else frame.mean,
        std=tuple(std) if std is not None else frame.std,
        resize=resize,
        name=frame.name if not changed else "custom",
    )


def crop_fraction_resize(size: tuple[int, int], frame: Preprocessing) -> int | None:
    """The resize that gives a ``size`` crop the crop fraction of ``frame`` (None when ``frame`` has no resize)."""
    if frame.resize is None:
        return None
    side = min(size)
    resize = side * frame.resize // min(frame.size)  # whole numbers: floor(260 * 256 / 224) = 297, like timm
    if resize > MAX_SIDE:
        raise UsageError(
            f"--size {side} is cropped from images resized to {resize} px (crop fraction {min(frame.size)}/"
            f"{frame.resize}), more than the {MAX_SIDE} px allowed; pass --resize {side} to crop without the margin."
        )
    return resize


def assumed_statistics_note(prep: Preprocessing) -> str:
    """The note an audit carries when no preset, ``--mean``/``--std`` or record in the checkpoint gave the mean and std:
    they decide what the model sees, and a wrong guess costs accuracy without any error."""
    return (
        f"{describe_statistics(prep.mean, prep.std)} assumed: the checkpoint records no normalisation and neither --preset "
        "nor --mean/--std was given; pass the model's own (docs/loading.md, finding a model's preprocessing)"
    )
