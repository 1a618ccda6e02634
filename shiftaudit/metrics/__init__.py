"""Streaming metric accumulators: ``update`` per batch, ``merge`` across processes, ``compute`` at the end.

Every metric reads the same :class:`~shiftaudit.metrics.base.ShiftBatch` (predictions of each image at each evaluated
shift), so one pass over images x shifts feeds all of them.
"""

from .accuracy import AccuracyAtRandomShift, AccuracyAtZeroShift, ZeroShiftConfidence
from .accuracy_map import AccuracyMap
from .adversarial import AdversarialCurve
from .base import Metric, ShiftBatch
from .consistency import ExactConsistency, SampledConsistency
from .flips import FlipExamples
from .variation import Variation

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
