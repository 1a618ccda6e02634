"""shiftaudit: how shift-robust is an image model, where is robustness lost, and what would anti-aliasing buy.

The public API is importable from here; heavy submodules are loaded on first use so that
``import shiftaudit`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ShiftAuditError": "shiftaudit.errors",
    "Preprocessing": "shiftaudit.data.presets",
    "load_model": "shiftaudit.loading",
    "build_model": "shiftaudit.loading",
    "save_model": "shiftaudit.loading",
    "LoadedModel": "shiftaudit.loading",
    "load_data": "shiftaudit.data",
    "ShiftSet": "shiftaudit.shifts.sets",
    "audit": "shiftaudit.engine.runner",
    "run_plan": "shiftaudit.engine.runner",
    "plan_audit": "shiftaudit.engine.plan",
    "AuditPlan": "shiftaudit.engine.plan",
    "AuditConfig": "shiftaudit.engine.config",
    "AuditInterrupted": "shiftaudit.errors",
    "gate": "shiftaudit.gating",
    "Threshold": "shiftaudit.gating",
    "GateReport": "shiftaudit.gating",
    "register_metric": "shiftaudit.metrics",
    "AuditResult": "shiftaudit.result",
    "inspect_model": "shiftaudit.antialias.inspection",
    "get_filter": "shiftaudit.antialias.filters",
    "BlurPool2d": "shiftaudit.antialias.blurpool",
    "blur_pool2d": "shiftaudit.antialias.blurpool",
    "patch": "shiftaudit.antialias",
    "PatchReport": "shiftaudit.antialias.report",
    "patch_and_evaluate": "shiftaudit.antialias.workflow",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'shiftaudit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
