"""Data for audits: image folders, CIFAR-10, tensor files, Hugging Face datasets, tar shards and data in memory,
preprocessed for the model.

``load_data(source, preprocessing=...)`` gives an :class:`AuditDataset`; ``make_loader`` batches it for the engine
as ``(images, labels, indices)``. See :mod:`.sources` for the kinds of source (registered by name: :mod:`.kinds`)
and :mod:`.preprocess` for the exact preprocessing.
"""

from __future__ import annotations

from shiftaudit.data.classes import read_class_map
from shiftaudit.data.dataset import AuditDataset
from shiftaudit.data.kinds import DataKind, data_kind_names, register_data_kind, unregister_data_kind
from shiftaudit.data.loader import AuditLoader, make_loader
from shiftaudit.data.sources import KINDS, detect_kind, load_data

__all__ = [
    "KINDS",
    "AuditDataset",
    "AuditLoader",
    "DataKind",
    "data_kind_names",
    "detect_kind",
    "load_data",
    "make_loader",
    "read_class_map",
    "register_data_kind",
    "unregister_data_kind",
]
