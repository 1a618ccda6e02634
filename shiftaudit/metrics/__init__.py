"""Streaming metric accumulators: ``update`` per batch, ``merge`` across processes, ``compute`` at the end.

Every metric reads the same :class:`~shiftaudit.metrics.base.ShiftBatch` (predictions of each image at each evaluated
shift), so one pass over images x shifts feeds all of them. Each module registers its metrics
(:mod:`shiftaudit.metrics.registry`) when imported here; ``report_rank`` fixes the report order, not the imports.
"""

from shiftaudit.metrics.accuracy import AccuracyAtRandomShift, AccuracyAtZeroShift, ZeroShiftConfidence
from shiftaudit.metrics.accuracy_map import AccuracyMap
from shiftaudit.metrics.adversarial import AdversarialCurve
from shiftaudit.metrics.base import Metric, MetricContext, Reading, ShiftBatch
from shiftaudit.metrics.consistency import ExactConsistency, SampledConsistency
from shiftaudit.metrics.flips import FlipExamples
from shiftaudit.metrics.registry import (
    create_metric,
    default_metrics,
    get_metric,
    metric_classes,
    register_metric,
    unregister_metric,
)
from shiftaudit.metrics.stability import FlipRate, MeanAbsoluteChange
from shiftaudit.metrics.variation import Variation

__all__ = [
    "AccuracyAtRandomShift",
    "AccuracyAtZeroShift",
    "AccuracyMap",
    "AdversarialCurve",
    "ExactConsistency",
    "FlipExamples",
    "FlipRate",
    "MeanAbsoluteChange",
    "Metric",
    "MetricContext",
    "Reading",
    "SampledConsistency",
    "ShiftBatch",
    "Variation",
    "ZeroShiftConfidence",
    "create_metric",
    "default_metrics",
    "get_metric",
    "metric_classes",
    "register_metric",
    "unregister_metric",
]
