"""What the user asked of an audit, as one frozen value: the first of config -> plan -> run.

:class:`AuditConfig` holds the choices only (no model, no data); :func:`shiftaudit.engine.plan.plan_audit` turns it,
a model and data into an :class:`~shiftaudit.engine.plan.AuditPlan`, and :func:`shiftaudit.engine.runner.run_plan`
executes that. Every field has the CLI's default.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from shiftaudit.engine.backends import runtime_names
from shiftaudit.errors import UsageError
from shiftaudit.gating import thresholds_from
from shiftaudit.limits import MAX_PAIRS, check_range

PRECISIONS = ("fp32", "bf16", "fp16")
MODES = ("auto", "exhaustive", "sampled")
MAX_THREADS = 1024


def backend_names() -> tuple[str, ...]:
    """Who may run the model's forward passes: auto, torch, or an inference runtime of
    :mod:`shiftaudit.engine.backends` (CPU only); auto picks a runtime where one is installed, applies and pays."""
    return ("auto", "torch", *runtime_names())


@dataclass(frozen=True)
class AuditConfig:
    """An audit's settings (see :func:`shiftaudit.audit` for each one's meaning).

    ``metrics``: accumulators to run instead of the default ones; ``observers``: extra watchers of the forward
    passes (e.g. per-layer distances); ``thresholds``: gate thresholds (:mod:`shiftaudit.gating`), the mapping or
    list :func:`shiftaudit.gate` takes, checked against the plan before any work and judged on the result.
    ``sequential``: decide the thresholds from random draws, stopping as soon as each is clearly met or missed
    (:mod:`shiftaudit.engine.sequential`); ``None``: the plan decides, and does so when a verdict is all the audit
    gives (thresholds, no ``layers``, no ``resume``). ``decision_error`` bounds the chance that the verdict differs
    from the exhaustive audit's, ``sequential_budget`` the fraction of the exhaustive audit's forward passes spent
    before the exhaustive audit decides instead. ``backend``: torch (the default), openvino, onnxruntime or auto
    (:mod:`shiftaudit.engine.backend_plan`); ``threads``: CPU threads for the forward passes (None: torch's own
    count, one under pytest-xdist, torchrun or on a loaded machine; :mod:`shiftaudit.engine.threads`).
    """

    shifts: Any = None  # a ShiftSet, or None for the default set of the image size
    max_shift: int | None = None
    shift_step: int | float | None = None
    mode: str = "auto"
    shift_mode: str = "circular"
    pairs: int = 5
    seed: int = 0
    device: str | torch.device | None = "auto"
    precision: str = "fp32"
    batch_size: int | None = None
    channels_last: bool | None = None
    num_workers: int | None = None
    metrics: tuple[Any, ...] | None = None
    observers: tuple[Any, ...] = ()
    layers: str | tuple[str, ...] | None = None
    polyphase: bool | None = None
    early_exit: bool | None = None
    compile: bool = False
    pack_rows: bool | None = None  # dense rows share device batches across image batches; None: on CUDA only
    resume: str | Path | None = None
    thresholds: Any = ()  # a mapping or Threshold list when given; a tuple of Threshold once built
    sequential: bool | None = False
    decision_error: float = 0.01
    sequential_budget: float = 0.5
    backend: str = "torch"
    threads: int | None = None

    def __post_init__(self) -> None:
        """``thresholds`` as :func:`shiftaudit.gate` takes them (a mapping such as ``{"min_consistency": 0.95}`` or
        a list of :class:`~shiftaudit.gating.Threshold`), each checked, held as a tuple of Threshold."""
        object.__setattr__(self, "thresholds", tuple(thresholds_from(self.thresholds or ())))

    def check(self) -> None:
        """Refuse settings that are wrong whatever the model and data."""
        if self.precision not in PRECISIONS:
            raise UsageError(f"Unknown `precision` {self.precision!r}; use one of {', '.join(PRECISIONS)}.")
        if self.backend not in backend_names():
            raise UsageError(f"Unknown `backend` {self.backend!r}; use one of {', '.join(backend_names())}.")
        if self.threads is not None:
            check_range(self.threads, "`threads`", 1, MAX_THREADS, "the forward passes' CPU threads")
        if self.pairs < 1:
            raise UsageError(f"`pairs` must be at least 1, got {self.pairs}.")
        check_range(self.pairs, "`pairs`", 1, MAX_PAIRS, "sampled mode runs 2 + 2 x pairs forward passes per image")
        if not 0.0 < self.decision_error <= 0.5:
            raise UsageError(f"`decision_error` takes a probability in (0, 0.5], e.g. 0.01; got {self.decision_error:g}.")
        if not 0.0 < self.sequential_budget <= 1.0:
            raise UsageError(
                f"The sequential budget is a fraction of the exhaustive audit in (0, 1]; got {self.sequential_budget:g}."
            )
        if self.sequential and not self.thresholds:
            raise UsageError("The sequential gate decides gate thresholds; give at least one (e.g. min_consistency).")


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"Unknown device {device!r}; use auto, cpu or cuda[:N].") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("`device` cuda was asked for but no CUDA GPU is available; use `device` cpu or auto.")
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"Device {device!r} is not supported; use auto, cpu or cuda[:N].")
    return dev
