"""Which strategy the engine runs: dense (every pair through the model), polyphase (every shift at once), or
adversary early exit; and the optional ``torch.compile`` wrapper.

Each check appends a report note saying why a faster strategy was not used when it was asked for, and falls back to
dense. The polyphase model must also pass a numeric probe against direct forwards (:data:`POLYPHASE_TOLERANCE`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from shiftaudit.engine.forward import model_exits_fail
from shiftaudit.engine.observers import Observer
from shiftaudit.engine.polyphase import PolyphaseUnsupported, build_polyphase, probe
from shiftaudit.metrics import AdversarialCurve, Metric
from shiftaudit.shifts.sets import ShiftSet

POLYPHASE_TOLERANCE = 1e-3  # largest logit difference (relative to 1 + max |logit|) the probe accepts


def try_polyphase(
    model: nn.Module,
    dataset: Any,
    shifts: ShiftSet,
    exhaustive: bool,
    observers: list[Observer],
    wanted: bool | None,
    dev: torch.device,
    dtype: torch.dtype,
    notes: list[str],
) -> tuple[str, nn.Module]:
    """The polyphase model when it applies and pays (auto: every H*W shift asked for); otherwise ("dense", model)."""
    auto = wanted is None
    if not exhaustive or observers or (auto and len(shifts) < shifts.height * shifts.width):
        if not auto:
            why = "per-layer distances watch each shifted input" if observers else "it needs exhaustive mode"
            notes.append(f"polyphase engine not used: {why}")
        return "dense", model
    gen = torch.Generator().manual_seed(0)  # a probe input: the check is about the model, not the data
    first = torch.randn((1, int(getattr(dataset, "channels", 3)), shifts.height, shifts.width), generator=gen)
    first = first.to(dev, dtype=dtype)
    try:
        with torch.inference_mode(), model_exits_fail("The model failed while the polyphase engine was checked against it"):
            poly = build_polyphase(model, first, shifts.dh, shifts.dw).to(dev)
            err = probe(model, poly, first, shifts.dh, shifts.dw)
    except PolyphaseUnsupported as exc:
        if not auto:
            notes.append(f"polyphase engine not applicable ({exc}); evaluated every shift separately")
        return "dense", model
    if not err <= POLYPHASE_TOLERANCE:
        notes.append(
            f"polyphase engine failed its check against direct forwards (error {err:.2g}); evaluated every shift separately"
        )
        return "dense", model
    notes.append("polyphase engine: every circular shift of an image from one shift-and-stitch evaluation")
    return "polyphase", poly


def early_exit_ok(metric: Metric) -> bool:
    """Metrics that only need the zero shift and each image's smallest misclassified shift."""
    return bool(metric.early_exit_safe)


def early_exit_strategy(
    metric_list: list[Metric], exhaustive: bool, labelled: bool, observers: list[Observer], wanted: bool | None, notes: list[str]
) -> str:
    blockers = [m.name for m in metric_list if not early_exit_ok(m)]
    ok = exhaustive and labelled and not observers and not blockers and any(isinstance(m, AdversarialCurve) for m in metric_list)
    if ok:
        return "early-exit"
    if wanted:
        why = (
            "it needs labelled data and exhaustive mode"
            if not (exhaustive and labelled)
            else "per-layer distances need every shift"
            if observers
            else f"{', '.join(blockers)} need every shift"
            if blockers
            else "no adversarial curve was asked for"
        )
        notes.append(f"adversary early exit not used: {why}")
    return "dense"


def compile_model(model: nn.Module, notes: list[str]) -> nn.Module:
    if not hasattr(torch, "compile"):
        notes.append("torch.compile is not available in this torch; ran the model eagerly")
        return model
    try:
        return torch.compile(model, dynamic=False)  # type: ignore[return-value]
    except Exception as exc:
        notes.append(f"torch.compile failed ({type(exc).__name__}); ran the model eagerly")
        return model
