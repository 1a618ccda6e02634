"""Metrics by name, in the style of torchvision's ``register_model``: one registration per metric class.

``report_rank`` orders the report's ``metrics`` and ``per_image`` sections (ties: registration order), and
``display_order`` the tables; neither depends on the order modules are imported in. A metric written outside the
package registers itself the same way and then appears in default audits (when its
:meth:`~shiftaudit.metrics.base.Metric.default_for` says so), the JSON report, the tables, ``compare`` and the HTML
report, with no other change.
"""

from __future__ import annotations

from typing import Any, TypeVar

from shiftaudit.metrics.base import Metric, MetricContext
from shiftaudit.metrics.entries import SECTIONS, Entry

M = TypeVar("M", bound=type[Metric])

_METRICS: dict[str, type[Metric]] = {}


def register_metric(cls: M) -> M:
    """Class decorator: make ``cls`` known by its ``name``. Registering a second class under a taken name is refused
    (unregister the first one)."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} needs a class attribute `name` to be registered")
    if name in _METRICS and _METRICS[name] is not cls:
        raise ValueError(f"a metric named {name!r} is already registered ({_METRICS[name].__name__})")
    _METRICS[name] = cls
    return cls


def unregister_metric(name: str) -> None:
    _METRICS.pop(name, None)


def metric_classes() -> list[type[Metric]]:
    """Every registered metric class, in report order (``report_rank``, then registration order)."""
    return sorted(_METRICS.values(), key=lambda cls: cls.report_rank)


def get_metric(name: str) -> type[Metric]:
    try:
        return _METRICS[name]
    except KeyError:
        raise KeyError(f"no metric named {name!r}; registered: {', '.join(_METRICS)}") from None


def create_metric(name: str, *args: Any, **kwargs: Any) -> Metric:
    return get_metric(name)(*args, **kwargs)


def default_metrics(ctx: MetricContext) -> list[Metric]:
    """The metrics a default audit in ``ctx`` runs, in report order (each class decides; see ``default_for``).

    A set of one shift (the zero shift: ``max_shift=0``) leaves out the metrics that compare an image's shifted copies
    (``compares_shifts``), with a note: a consistency of 100 % with an interval would be true of every model."""
    out = []
    single = len(ctx.shift_set) == 1
    if single and any(cls.compares_shifts for cls in metric_classes()):
        ctx.notes.append(
            "only the zero shift was evaluated (max shift 0): consistency, variation, flip rate and the other metrics "
            "that compare an image's shifted copies are not reported, since each would read perfect for any model; "
            "raise --max-shift to measure them"
        )
    for cls in metric_classes():
        if single and cls.compares_shifts:
            continue
        metric = cls.default_for(ctx)
        if metric is not None:
            out.append(metric)
    return out


def entry_types() -> dict[tuple[str, ...], type[Entry] | None]:
    """The report key of every reported metric with the type of its entry (None: a JSON value kept as it is), and
    of the sections the engine writes beside them (:data:`~shiftaudit.metrics.entries.SECTIONS`)."""
    return {**{cls.key(): cls.entry_type for cls in metric_classes() if cls.reported}, **SECTIONS}


def report_order(metrics: list[Metric]) -> list[Metric]:
    """``metrics`` in registration order; metrics of unregistered classes after them, in the order given."""
    rank = {cls: i for i, cls in enumerate(metric_classes())}
    return sorted(metrics, key=lambda m: rank.get(type(m), len(rank)))
