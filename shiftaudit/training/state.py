"""The resumable state of a fine-tuning run: one safetensors file, written atomically, read without pickle.

Everything that continues a run exactly is in it: the step, the student's weights, AdamW's moments, the schedule's
position, the weight average, the best evaluation's weights and the history. The batches and every random draw are
functions of (seed, step) (:mod:`shiftaudit.training.draws`), so no generator state is needed: a run continued from
step k gives the weights of an uninterrupted one. The file also holds the run's fingerprint (teacher and starting
weights, images, settings); a continuation whose parts differ is refused with one sentence naming what changed.
safetensors carries tensors and strings only, so loading a crafted file cannot run code, and its header is checked
against the file's length by the library.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from shiftaudit.engine.resume import changed_parts, check_resume_path, data_digest, weights_digest
from shiftaudit.errors import UsageError
from shiftaudit.files import Refused, check_destination, read_regular, write_bytes_atomic

FORMAT = "shiftaudit/train-state"
VERSION = "1"
MAX_BYTES = 1 << 38  # 256 GiB: far above any model's weights, optimiser and average together


@dataclass
class RunState:
    """Where a run stands between two steps (what is saved; tensors by reference)."""

    step: int = 0
    elapsed: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    best_step: int = 0
    best_score: float = float("-inf")
    since_best: int = 0
    best_weights: dict[str, torch.Tensor] = field(default_factory=dict)
    resumed_at: int | None = None


def fingerprint(teacher: nn.Module, student: nn.Module, data: Any, settings: dict[str, Any]) -> dict[str, str]:
    """What a continuation must share with the saved run, part by part (the time budget may change)."""
    from shiftaudit import __version__  # local: read per call (tests change it)

    parts: dict[str, object] = {
        "the shiftaudit version": __version__,
        "the original model's weights": weights_digest(teacher),
        "the patched model (its patch and starting weights)": weights_digest(student),
        "the training images": [getattr(data, "description", ""), len(data), data_digest(data)],
        **{f"--{k.replace('_', '-')}": v for k, v in settings.items() if k != "seconds"},
    }
    return {k: json.dumps(v, sort_keys=True, default=str) for k, v in parts.items()}


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for index, slot in sd["state"].items():
        for key, value in slot.items():
            if isinstance(value, torch.Tensor):
                tensors[f"opt/{index}/{key}"] = value
            else:
                scalars[f"{index}/{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def save(
    path: Path,
    parts: dict[str, str],
    run: RunState,
    student: nn.Module,
    opt: torch.optim.Optimizer,
    schedule: Any,
    ema: nn.Module | None,
) -> None:
    """Write the state file atomically (a crash leaves the previous one whole)."""
    tensors = {f"student/{k}": v for k, v in student.state_dict().items()}
    tensors |= {f"best/{k}": v for k, v in run.best_weights.items()}
    if ema is not None:
        tensors |= {f"ema/{k}": v for k, v in ema.state_dict().items()}
    opt_tensors, opt_rest = _optimizer_tensors(opt)
    tensors |= opt_tensors
    meta = {
        "step": run.step,
        "elapsed": run.elapsed,
        "history": run.history,
        "losses": run.losses,
        "best_step": run.best_step,
        "best_score": run.best_score,
        "since_best": run.since_best,
        "optimizer": opt_rest,
        "schedule": schedule.state_dict(),
    }
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}  # shared storage is refused by safetensors
    blob = safetensors.torch.save(
        tensors, {"format": FORMAT, "version": VERSION, "parts": json.dumps(parts), "run": json.dumps(meta)}
    )
    write_bytes_atomic(path, blob)


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    damaged = UsageError(f"--resume file {path} is not a shiftaudit fine-tuning state (or is damaged); delete it to start over.")
    try:
        blob = read_regular(path, MAX_BYTES)
        tensors = safetensors.torch.load(blob)
        header_len = int.from_bytes(blob[:8], "little")
        meta = json.loads(blob[8 : 8 + header_len]).get("__metadata__") or {}
    except Refused as exc:
        raise UsageError(f"--resume file {path} {exc}.") from None
    except (ValueError, OSError, json.JSONDecodeError, safetensors.SafetensorError):
        raise damaged from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise damaged
    return tensors, meta


def load(
    path: Path, parts: dict[str, str], student: nn.Module, opt: torch.optim.Optimizer, schedule: Any, ema: nn.Module | None
) -> RunState | None:
    """Restore a saved run into the given objects; None when there is no file yet."""
    check_resume_path(path)
    check_destination(path, "--resume")
    if not path.exists():
        return None
    tensors, meta = _read(path)
    try:
        changed = changed_parts(path, json.loads(meta["parts"]), parts)
        if changed is not None:
            raise changed
        run = json.loads(meta["run"])
        student.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("student/")})
        if ema is not None:
            ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema/")})
        _load_optimizer(opt, tensors, run["optimizer"])
        schedule.load_state_dict(run["schedule"])
    except (KeyError, RuntimeError, ValueError, TypeError):
        raise UsageError(f"--resume file {path} does not fit this run (or is damaged); delete it to start over.") from None
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best/")}
    return RunState(
        run["step"],
        run["elapsed"],
        run["history"],
        run["losses"],
        run["best_step"],
        run["best_score"],
        run["since_best"],
        best,
        run["step"],
    )


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("opt/"):
            _, index, name = key.split("/", 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in rest["scalars"].items():
        index, name = key.split("/", 1)
        state.setdefault(int(index), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": rest["param_groups"]})
