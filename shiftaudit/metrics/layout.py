"""The report's ``metrics`` and ``per_image`` sections, laid out from the accumulators' results.

Each metric says where its result goes (``report_key``) and which value it keeps per image (``per_image_column``);
this walks them in registration order (:mod:`shiftaudit.metrics.registry`), so the report's order never depends
on the order metrics were passed in.
"""

from __future__ import annotations

from typing import Any

from shiftaudit.metrics.base import Metric
from shiftaudit.metrics.registry import report_order


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
