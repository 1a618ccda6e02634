"""Data for audits: image folders, CIFAR-10, tensor files and data in memory, preprocessed for the model.

``load_data(source, preprocessing=...)`` gives an :class:`AuditDataset`; ``make_loader`` batches it for the engine
as ``(images, labels, indices)``. See :mod:`.sources` for the kinds of source and :mod:`.preprocess` for the
exact preprocessing.
"""

from __future__ import annotations

from shiftaudit.data.dataset import AuditDataset, AuditLoader, make_loader
from shiftaudit.data.sources import KINDS, detect_kind, load_data, read_class_map

__all__ = ["KINDS", "AuditDataset", "AuditLoader", "detect_kind", "load_data", "make_loader", "read_class_map"]
