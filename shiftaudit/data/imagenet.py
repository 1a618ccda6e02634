"""The ImageNet-1k class index, shipped with the package (``assets/imagenet_class_index.json``; made by
``scripts/make_imagenet_classes.py``), and the check that catches ImageNet folders audited without it.

An ImageFolder tree is labelled by the sorted position of its folders. For a 1000-class ImageNet model and a few
WordNet-id folders (``n02123045``, ...) those positions (0, 1, 2, ...) are not the model's class indices, and the
audit would report a meaningless "accuracy 0 %". ``--class-map imagenet`` maps WordNet ids and class names to the
right indices; :func:`missing_class_map` says when it was needed and not given.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from importlib import resources

BUILTIN = "imagenet"  # the name --class-map takes for this map
NUM_CLASSES = 1000
WNID = re.compile(r"n\d{8}")


@functools.cache
def imagenet_classes() -> tuple[tuple[str, str], ...]:
    """(WordNet id, class name) per ImageNet-1k index, from the packaged file."""
    text = resources.files("shiftaudit").joinpath("assets", "imagenet_class_index.json").read_text(encoding="utf-8")
    index = json.loads(text)
    return tuple((str(index[str(i)][0]), str(index[str(i)][1])) for i in range(len(index)))


@functools.cache
def imagenet_lookup() -> dict[str, int]:
    """Folder name -> index: WordNet ids, class names, and class names with underscores for spaces."""
    out: dict[str, int] = {}
    for i, (wnid, name) in enumerate(imagenet_classes()):
        out[wnid] = i
        out.setdefault(name, i)
        out.setdefault(name.replace(" ", "_"), i)
    return out


def imagenet_class_map() -> tuple[dict[str, int], dict[int, str]]:
    """The built-in class map: folder name -> index, and index -> class name (what figures show)."""
    return dict(imagenet_lookup()), {i: name for i, (_, name) in enumerate(imagenet_classes())}


def missing_class_map(folders: Sequence[str], num_classes: int | None) -> str | None:
    """One sentence when ``folders`` (an ImageFolder's classes, in label order) look like ImageNet classes, the model
    has 1000 outputs, and the positional labels would not be the ImageNet indices; else None.

    A folder set whose sorted positions already are the ImageNet indices (all 1000 classes, or the first few) needs
    no map and is let through.
    """
    if num_classes != NUM_CLASSES or not folders:
        return None
    lookup = imagenet_lookup()
    if all(WNID.fullmatch(f) for f in folders):
        kind = "WordNet ids"
    elif all(f in lookup for f in folders):
        kind = "ImageNet class names"
    else:
        return None
    if all(lookup.get(f) == i for i, f in enumerate(folders)):
        return None
    shown = ", ".join(folders[:3]) + (", ..." if len(folders) > 3 else "")
    return (
        f"The class folders are {kind} ({shown}) and the model has 1000 classes, but without a class map they would "
        f"be labelled 0-{len(folders) - 1} by sorted position instead of by ImageNet index; pass --class-map imagenet."
    )
