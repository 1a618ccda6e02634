"""Class names to label indices for stores that name their classes (dataset features, shard labels), the way an
ImageFolder tree's sub-folder names become labels: sorted positions, or the model's indices through a class map."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from shiftaudit.errors import DataError

ClassMap = str | Path | Mapping[str, Any] | Sequence[str]


def map_class_names(
    names: Sequence[str], used: Sequence[int], class_map: ClassMap, num_classes: int | None, where: str
) -> tuple[list[int], list[str]]:
    """(position in ``names`` -> the model's class index, class names by model index) through ``class_map``.

    Like a class folder missing from the map, a class that labels an image (``used``) but has no entry is an error:
    most likely the wrong map.
    """
    from shiftaudit.data.sources import read_class_map

    mapping, shown = read_class_map(class_map, num_classes)
    unknown = sorted({names[i] for i in used if names[i] not in mapping})
    if unknown:
        listed = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise DataError(
            f"{len(unknown)} of the classes of {where} are not in the class map: {listed}; every class needs an entry."
        )
    to_model = [mapping.get(name, -1) for name in names]
    classes = [shown.get(i, str(i)) for i in range(max(shown) + 1)] if shown else []
    return to_model, classes
