"""The shape of an audit report, checked before ``compare`` reads one.

``compare`` reads files it did not write. A report whose ``metrics`` is a list, whose accuracy is a string or whose
accuracy map is ragged would otherwise fail deep in the table or the plotting code as an internal error. The spec
below lists every field ``compare`` (its table, JSON and pictures) reads, with the type it must have; fields it does
not read are not checked, and a missing field is fine (older reports, unlabelled or sampled runs).
"""

from __future__ import annotations

from typing import Any

NUMBER, NUMBER_OR_NULL, INTEGER, STRING, BOOLEAN, OBJECT, NULL = (
    "number",
    "number or null",
    "integer",
    "string",
    "true/false",
    "object",
    "null",
)

_STAT = {"value": NUMBER_OR_NULL, "ci_low": NUMBER_OR_NULL, "ci_high": NUMBER_OR_NULL, "n": NUMBER_OR_NULL}
_SUMMARY = {
    "mean": NUMBER_OR_NULL,
    "median": NUMBER_OR_NULL,
    "ci_low": NUMBER_OR_NULL,
    "ci_high": NUMBER_OR_NULL,
    "n": NUMBER_OR_NULL,
}

REPORT: dict[str, Any] = {
    "schema": STRING,
    "schema_version": INTEGER,
    "model": OBJECT,
    "environment": OBJECT,
    "notes": [STRING],
    "gate": (OBJECT, NULL),
    "data": {"description": STRING, "kind": STRING, "num_images": INTEGER, "labelled": BOOLEAN, "image_size": [INTEGER],
             "nonfinite_images": INTEGER, "preprocessing": (OBJECT, NULL)},
    "settings": {
        "shifts": {"mode": STRING, "kind": STRING, "image_size": [INTEGER], "max_shift": NUMBER, "step": NUMBER,
                   "count": INTEGER, "padding": STRING},
        "shift_mode": STRING, "mode": STRING, "pairs": INTEGER, "seed": INTEGER, "precision": STRING,
    },
    "metrics": {
        "accuracy": {"none": _STAT, "random": _STAT},
        "consistency": {"exact": _STAT, "sampled": _STAT},
        "variation": _SUMMARY,
        "flip_rate": _SUMMARY,
        "mac": _SUMMARY,
        "adversarial": {"radius": [NUMBER], "accuracy": [NUMBER], "ci_low": [NUMBER_OR_NULL], "ci_high": [NUMBER_OR_NULL],
                        "n": NUMBER_OR_NULL},
        "accuracy_map": {"dh": [NUMBER], "dw": [NUMBER], "accuracy": [[NUMBER_OR_NULL]],
                         "diagonal": {"shift": [NUMBER], "accuracy": [NUMBER_OR_NULL]}, "min": NUMBER_OR_NULL,
                         "max": NUMBER_OR_NULL},
    },
    "per_image": {"image_id": [INTEGER], "variation": [NUMBER_OR_NULL]},
}


def _is(value: Any, kind: str) -> bool:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return {
        NUMBER: number,
        NUMBER_OR_NULL: number or value is None,
        INTEGER: isinstance(value, int) and not isinstance(value, bool),
        STRING: isinstance(value, str),
        BOOLEAN: isinstance(value, bool),
        OBJECT: isinstance(value, dict),
        NULL: value is None,
    }[kind]


def _words(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    return {int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__
    )


def _check(value: Any, spec: Any, where: str) -> str | None:
    """The first place where ``value`` does not match ``spec``, in words, or None."""
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            return f"{where} is {_words(value)}, not an object"
        for key, sub in spec.items():
            if key in value:
                problem = _check(value[key], sub, f"{where}.{key}")
                if problem:
                    return problem
        return None
    if isinstance(spec, list):
        if not isinstance(value, list):
            return f"{where} is {_words(value)}, not a list"
        for i, item in enumerate(value):
            problem = _check(item, spec[0], f"{where}[{i}]")
            if problem:
                return problem
        return None
    kinds = spec if isinstance(spec, tuple) else (spec,)
    if not any(_is(value, k) for k in kinds):
        wanted = " or ".join(("an " if k == OBJECT else "a " if k != NULL else "") + k for k in kinds)
        return f"{where} is {_words(value)}, not {wanted}"
    return None


def _lengths(m: dict[str, Any]) -> str | None:
    """Lists that must be there and line up: the adversarial curve's columns, the accuracy map's grid and diagonal."""
    adv = m.get("adversarial")
    if adv:
        if any(k not in adv for k in ("radius", "accuracy", "ci_low", "ci_high")):
            return "metrics.adversarial lacks one of radius, accuracy, ci_low, ci_high"
        n = len(adv["radius"])
        if n == 0 or any(len(adv[k]) != n for k in ("accuracy", "ci_low", "ci_high")):
            return "metrics.adversarial has columns of different lengths"
    amap = m.get("accuracy_map")
    if amap:
        if any(k not in amap for k in ("dh", "dw", "accuracy", "diagonal")) or any(
            k not in amap["diagonal"] for k in ("shift", "accuracy")
        ):
            return "metrics.accuracy_map lacks one of dh, dw, accuracy, diagonal.shift, diagonal.accuracy"
        dh, dw, grid = amap["dh"], amap["dw"], amap["accuracy"]
        if not dh or not dw or len(grid) != len(dh) or any(len(row) != len(dw) for row in grid):
            return "metrics.accuracy_map.accuracy is not a dh x dw grid"
        if len(amap["diagonal"]["shift"]) != len(amap["diagonal"]["accuracy"]):
            return "metrics.accuracy_map.diagonal has columns of different lengths"
    return None


def report_problem(report: Any) -> str | None:
    """Why ``report`` cannot be read as an audit report (a few words naming the field), or None when it can."""
    problem = _check(report, REPORT, "the report")
    if problem:
        return problem.replace("the report.", "", 1)
    metrics = report.get("metrics", {})
    for name, value in metrics.items():  # other metrics with a "value" appear as rows of their own
        if isinstance(value, dict) and "value" in value:
            problem = _check(value, _STAT, f"metrics.{name}")
            if problem:
                return problem
    return _lengths(metrics)
