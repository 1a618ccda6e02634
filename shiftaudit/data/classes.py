"""Class maps: folder or class names to the model's class indices (``--class-map``), read from a JSON file or object,
and applied to stores that name their classes (dataset features, shard labels) the way an ImageFolder tree's
sub-folder names become labels: sorted positions, or the model's indices through the map."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from shiftaudit.data.imagenet import BUILTIN as BUILTIN_CLASS_MAP
from shiftaudit.data.imagenet import imagenet_class_map
from shiftaudit.errors import DataError
from shiftaudit.files import Refused, read_regular
from shiftaudit.jsonfile import JsonInputError, load_json
from shiftaudit.limits import MAX_CLASSES, is_int

ClassMap = str | Path | Mapping[str, Any] | Sequence[str]
MAX_CLASS_MAP_BYTES = 16 << 20  # ImageNet-21k's index file is under 1 MiB


def read_class_map(class_map: ClassMap, num_classes: int | None = None) -> tuple[dict[str, int], dict[int, str]]:
    """Folder name -> class index, and index -> name, from a JSON file or object.

    Accepted: ``"imagenet"`` (the packaged ImageNet-1k index: WordNet ids and class names); ``{"n01440764": 0, ...}``;
    a list of names (index = position); and the Keras/ImageNet ``{"0": ["n01440764", "tench"], ...}`` index file,
    whose second entry names the class in figures. Every index must be a JSON integer (not ``true``, ``0.9`` or
    ``1e20``) below ``num_classes`` (the model's; :data:`~shiftaudit.limits.MAX_CLASSES` when unknown), because a
    list of classes is allocated up to the largest index.
    """
    if isinstance(class_map, str) and class_map == BUILTIN_CLASS_MAP:  # a file called imagenet: pass ./imagenet
        return imagenet_class_map()
    obj: Any = class_map
    if isinstance(class_map, (str, Path)):
        p = Path(class_map)
        try:
            obj = load_json(read_regular(p, MAX_CLASS_MAP_BYTES))
        except Refused as exc:
            raise DataError(f"Class map {p} {exc}.") from None
        except JsonInputError as exc:
            raise DataError(f"Class map {p} cannot be used: {exc}.") from None
    limit = num_classes if num_classes is not None else MAX_CLASSES
    whose = f"the model's {num_classes} classes" if num_classes is not None else f"the {MAX_CLASSES:,} allowed"
    mapping: dict[str, int] = {}
    display: dict[int, str] = {}

    def index(name: str, value: Any, from_key: bool = False) -> int:
        if from_key and isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:  # {"0": [...]}
            value = int(value)
        if not is_int(value):
            shown = (
                json.dumps(value)[:40] if isinstance(value, (bool, int, float, str)) or value is None else type(value).__name__
            )
            raise DataError(f"Class map entry {name[:60]!r} is {shown}, not a whole class index; use integers like 0, 1, 2.")
        if not 0 <= value < limit:
            shown = (
                str(value)
                if abs(value) < 10**18
                else f"a {len(str(abs(value))) if abs(value) < 10**4000 else 'huge'}-digit number"
            )
            raise DataError(f"Class map entry {name[:60]!r} is {shown}, outside 0..{limit - 1} ({whose}).")
        return value

    if isinstance(obj, Mapping):
        values = list(obj.values())
        if values and all(isinstance(v, (list, tuple)) and v for v in values):  # {"0": ["wnid", "name"]}
            mapping = {str(v[0]): index(str(v[0]), k, from_key=True) for k, v in obj.items()}  # JSON keys are strings
            display = {mapping[str(v[0])]: str(v[1]) for v in values if len(v) > 1}
        else:
            mapping = {str(k): index(str(k), v) for k, v in obj.items()}
    elif isinstance(obj, Sequence) and not isinstance(obj, (str, bytes)):
        if len(obj) > limit:
            raise DataError(f"The class map lists {len(obj)} names, more than {whose}.")
        mapping = {str(name): i for i, name in enumerate(obj)}
    else:
        raise DataError(
            f"Class map must map folder names to class indices (or list the names in index order); got a {type(obj).__name__}."
        )
    names: dict[int, str] = {}
    for name, idx in mapping.items():
        names[idx] = f"{names[idx]}/{name}" if idx in names else name
    return mapping, {**names, **display}


def map_class_names(
    names: Sequence[str], used: Sequence[int], class_map: ClassMap, num_classes: int | None, where: str
) -> tuple[list[int], list[str]]:
    """(position in ``names`` -> the model's class index, class names by model index) through ``class_map``.

    Like a class folder missing from the map, a class that labels an image (``used``) but has no entry is an error:
    most likely the wrong map.
    """
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
