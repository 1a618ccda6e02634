"""The report's ``metrics`` and ``per_image`` sections, laid out from the accumulators' results.

The accumulators know nothing of each other or of the report schema; this is the one place that names their keys
in the JSON (accuracy, consistency, variation, adversarial, accuracy_map, and callers' own metrics by name).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from shiftaudit.metrics.adversarial import radius_json
from shiftaudit.metrics.base import Metric


def assemble(metric_list: list[Metric]) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """Lay the accumulators' results out in the report schema."""
    by_name = {m.name: m for m in metric_list}
    out: dict[str, Any] = {}
    per_image: dict[str, list[Any]] = {}
    ids: np.ndarray | None = None

    def add_per_image(key: str, metric: Metric, cast: Callable[[float], Any]) -> None:
        nonlocal ids
        mids, values = metric.sorted_values()  # type: ignore[attr-defined]
        if ids is None:
            ids = mids
            per_image["image_id"] = [int(v) for v in mids]
        per_image[key] = [cast(v) for v in values]

    if "accuracy_none" in by_name or "accuracy_random" in by_name:
        out["accuracy"] = {}
        if "accuracy_none" in by_name:
            out["accuracy"]["none"] = by_name["accuracy_none"].compute()
            add_per_image("correct", by_name["accuracy_none"], lambda v: bool(v))
        if "accuracy_random" in by_name:
            out["accuracy"]["random"] = by_name["accuracy_random"].compute()
    cons: dict[str, Any] = {}
    if "consistency_sampled" in by_name:
        m = by_name["consistency_sampled"]
        cons["sampled"] = m.compute()
        add_per_image("sampled_agreement", m, float)
    if "consistency_exact" in by_name:
        m = by_name["consistency_exact"]
        cons["exact"] = m.compute()
        add_per_image("exact_consistency", m, float)
    if cons:
        out["consistency"] = cons
    if "variation" in by_name:
        out["variation"] = by_name["variation"].compute()
        add_per_image("variation", by_name["variation"], float)
    if "adversarial" in by_name:
        adv = by_name["adversarial"]
        out["adversarial"] = adv.compute()
        add_per_image("first_failure_radius", adv, radius_json)
    if "accuracy_map" in by_name:
        out["accuracy_map"] = by_name["accuracy_map"].compute()
    for m in metric_list:  # metrics added by callers go under their own name
        if m.name not in by_name or m.name in out or not m.reported:
            continue
        if m.name not in {
            "accuracy_none",
            "accuracy_random",
            "consistency_sampled",
            "consistency_exact",
            "variation",
            "adversarial",
            "accuracy_map",
        }:
            out[m.name] = m.compute()
    return out, per_image
