"""The report's ``metrics`` and ``per_image`` sections: laid out from the accumulators' results, and read back.

Each metric says where its result goes (``report_key``), its type (``entry_type``) and which value it keeps per image
(``per_image_column``, ``per_image_type``); :func:`assemble` walks them in registration order
(:mod:`shiftaudit.metrics.registry`), so the report's order never depends on the order metrics were passed in, and
:func:`read_metrics`/:func:`read_per_image` read a report's sections back into the same types through the registry.
"""

from __future__ import annotations

from typing import Any

from shiftaudit.metrics.base import Metric
from shiftaudit.metrics.entries import ReportError, join, read_raw, reader, words
from shiftaudit.metrics.registry import entry_types, metric_classes, report_order


def assemble(metric_list: list[Metric]) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """Lay the accumulators' results out in the report schema."""
    out: dict[str, Any] = {}
    per_image: dict[str, list[Any]] = {}
    for metric in report_order([m for m in metric_list if m.reported]):
        *parents, leaf = metric.key()
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        if leaf in node:  # a second metric under a taken key (e.g. a caller's metric named like a built-in) is left out
            continue
        node[leaf] = metric.compute()
        column = metric.per_image_column
        if column is not None:
            ids, values = metric.sorted_values()  # type: ignore[attr-defined]
            per_image.setdefault("image_id", [int(v) for v in ids])
            per_image[column] = [metric.per_image_json(v) for v in values]
    return out, per_image


def read_metrics(obj: Any, path: str = "metrics") -> dict[str, Any]:
    """A report's ``metrics`` (from JSON, or laid out in memory) as typed entries, by the registry: each entry
    of a registered type read strictly, a group of entries (``accuracy``: ``none``, ``random``) an object that is
    not empty, and any other entry kept as its JSON value (:func:`~shiftaudit.metrics.entries.read_raw`)."""
    tree: dict[str, Any] = {}
    for key, kind in entry_types().items():
        node: Any = tree
        for part in key[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):  # a key taken by a metric of its own (assemble leaves the second one out)
                break
        else:
            node.setdefault(key[-1], kind)
    return _read_group(obj, tree, path)


def _read_group(obj: Any, tree: dict[str, Any], path: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ReportError(f"{path} is {words(obj)}, not an object")
    out = {}
    for key, value in obj.items():
        where, kind = join(path, key), tree.get(key)
        if isinstance(kind, dict):
            if value == {}:
                raise ReportError(f"{where} is empty")
            out[key] = _read_group(value, kind, where)
        else:
            out[key] = read_raw(value, where) if kind is None else kind.from_json(value, where)
    return out


def read_per_image(obj: Any, path: str = "per_image") -> dict[str, list[Any]]:
    """A report's ``per_image`` columns, checked: lists of one length, the image ids integers and each registered
    metric's column of its ``per_image_type``."""
    if not isinstance(obj, dict):
        raise ReportError(f"{path} is {words(obj)}, not an object")
    types: dict[str, Any] = {"image_id": int, "path": str | None}
    types.update({cls.per_image_column: cls.per_image_type for cls in metric_classes() if cls.per_image_column})
    for key, column in obj.items():
        reader(list[types.get(key, Any)])(column, join(path, key))  # type: ignore[misc]
    if obj and "image_id" not in obj:
        raise ReportError(f"{join(path, 'image_id')} is missing")
    lengths = {len(column) for column in obj.values()}
    if len(lengths) > 1:
        raise ReportError(f"{path} has columns of different lengths")
    return obj
