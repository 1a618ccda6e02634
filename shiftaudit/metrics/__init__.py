"""Streaming metric accumulators: ``update`` per batch, ``merge`` across processes, ``compute`` at the end.

Every metric reads the same :class:`~shiftaudit.metrics.base.ShiftBatch` (predictions of each image at each evaluated
shift), so one pass over images x shifts feeds all of them.
"""

from shiftaudit.metrics.accuracy import AccuracyAtRandomShift, AccuracyAtZeroShift, ZeroShiftConfidence
from shiftaudit.metrics.accuracy_map import AccuracyMap
from shiftaudit.metrics.adversarial import AdversarialCurve
from shiftaudit.metrics.base import Metric, ShiftBatch
from shiftaudit.metrics.consistency import ExactConsistency, SampledConsistency
from shiftaudit.metrics.flips import FlipExamples
from shiftaudit.metrics.variation import Variation

__all__ = [
    "AccuracyAtRandomShift",
    "AccuracyAtZeroShift",
    "AccuracyMap",
    "AdversarialCurve",
    "ExactConsistency",
    "FlipExamples",
    "Metric",
    "SampledConsistency",
    "ShiftBatch",
    "Variation",
    "ZeroShiftConfidence",
]
