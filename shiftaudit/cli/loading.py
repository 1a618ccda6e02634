"""Command-line values to library objects: the model, its preprocessing and the data, as the flags describe them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shiftaudit.data import load_data
from shiftaudit.data.presets import assumed_statistics_note, resolve_preprocessing
from shiftaudit.errors import UsageError
from shiftaudit.loading.architectures import parse_arch_kwargs
from shiftaudit.shifts.modes import get_shift_mode


def parse_floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated numbers like 0.485,0.456,0.406, got {text!r}.") from None
    if not values:
        raise UsageError(f"{flag} needs at least one number.")
    return values


def load_model_from_cli(
    model: Path, arch: str | None, num_classes: int | None, trust_pickle: bool, arch_kwargs: str | None = None
) -> Any:
    from shiftaudit.loading import load_model  # local: looked up per call: tests replace shiftaudit.loading.load_model

    kwargs = parse_arch_kwargs(arch_kwargs)
    return load_model(model, arch=arch, num_classes=num_classes, trust_pickle=trust_pickle, arch_kwargs=kwargs)


def resolve_cli_preprocessing(
    loaded: Any, preset: str | None, size: int | None, resize: int | None, mean: str | None, std: str | None, data: Path | None
) -> Any:
    default = getattr(loaded, "preprocessing", None)
    if preset is None and default is None and data is not None and _looks_like_cifar(data):
        preset = "cifar"
    return resolve_preprocessing(
        preset, size=size, mean=parse_floats(mean, "--mean"), std=parse_floats(std, "--std"), resize=resize, default=default
    )


def _looks_like_cifar(path: Path) -> bool:
    return (path / "cifar-10-batches-py").is_dir() or path.name == "cifar-10-batches-py"


def load_dataset_from_cli(
    loaded: Any,
    data: Path,
    *,
    preset: str | None,
    size: int | None,
    resize: int | None,
    mean: str | None,
    std: str | None,
    data_kind: str,
    class_map: str | None,
    limit: int | None,
    seed: int,
    strict: bool,
    raw: bool,
    shift_mode: str = "circular",
    max_shift: int | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
) -> Any:
    """The audit data as the flags describe it; in crop mode each image is a canvas --max-shift px larger per side."""
    prep = resolve_cli_preprocessing(loaded, preset, size, resize, mean, std, data)
    margin = get_shift_mode(shift_mode, "--shift-mode").canvas_margin(None, max_shift, prep.size)
    dataset = load_data(
        data,
        preprocessing=prep,
        kind=data_kind,
        class_map=class_map,
        limit=limit,
        seed=seed,
        strict=strict,
        raw=raw,
        num_classes=loaded.num_classes,
        canvas_margin=margin,
        image_column=image_column,
        label_column=label_column,
    )
    recorded = loaded.preprocessing is not None and not getattr(loaded, "preprocessing_assumed", False)
    if dataset.preprocessing is not None and not (recorded or preset or mean or std):
        dataset.add_note(assumed_statistics_note(dataset.preprocessing))
    return dataset
