"""Checkpoints in, ready models out: formats, architectures, identification from weights, saving.

``load_model`` is the single entry point the CLI and the Python API share; see its docstring.
"""

from __future__ import annotations

from shiftaudit.loading.architectures import build_model, canonical_arch, torchvision_names
from shiftaudit.loading.identify import Candidate, IdentifyResult, identify_architecture
from shiftaudit.loading.load import load_model, read_state_dict
from shiftaudit.loading.metadata import CheckpointMetadata, parse_metadata
from shiftaudit.loading.model import LoadedModel
from shiftaudit.loading.saving import save_model
from shiftaudit.loading.state_dict import classifier_key, infer_num_classes

__all__ = [
    "Candidate",
    "CheckpointMetadata",
    "IdentifyResult",
    "LoadedModel",
    "build_model",
    "canonical_arch",
    "classifier_key",
    "identify_architecture",
    "infer_num_classes",
    "load_model",
    "parse_metadata",
    "read_state_dict",
    "save_model",
    "torchvision_names",
]
