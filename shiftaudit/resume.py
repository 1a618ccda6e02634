"""Resumable audits: the metric accumulators' state, saved as the audit goes, so an interrupted run continues.

Every metric keeps per-image values keyed by image id, or sums (see :meth:`Metric.state_dict`), and is updated
only with whole batches. Saving those states with the ids already done, and loading them into fresh accumulators
later, therefore gives exactly the accumulators of an uninterrupted run once the remaining images are added: the
final JSON is the same. The state file also records a fingerprint of the run (model, data, shifts, seed,
settings), and refuses to continue a different run.

:func:`resume_state` builds that fingerprint for an audit and loads the saved state; :func:`subset_loader` feeds the
engine only the images still to do.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .atomicio import check_destination, write_bytes_atomic
from .errors import UsageError
from .metrics.base import Metric

if TYPE_CHECKING:
    from torch import nn

    from .observers import Observer
    from .shifts import ShiftSet

STATE_FORMAT = "shiftaudit/audit-state"
STATE_VERSION = 1


def fingerprint(parts: dict[str, Any]) -> str:
    """A stable digest of what must not change between the interrupted run and its continuation."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class ResumeState:
    """Loads an existing state file (if any) and saves the current one, at most every ``interval`` seconds."""

    def __init__(self, path: str | Path, fingerprint: str, interval: float = 20.0) -> None:
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.interval = float(interval)
        self._done: list[np.ndarray] = []  # ids per batch, joined when read (no quadratic regrowth)
        self.counters: dict[str, int] = {"images_done": 0, "nonfinite_images": 0, "rows": 0}
        self._last_save = time.monotonic()
        self.resumed = False

    def load_into(self, metric_list: list[Metric]) -> bool:
        """Restore the accumulators from the file, when it exists; returns whether anything was restored."""
        check_destination(self.path, "--resume")  # a FIFO would block the read, a device or symlink be replaced later
        if not self.path.exists():
            return False
        try:
            with np.load(self.path, allow_pickle=False) as npz:
                meta = json.loads(str(npz["__meta__"]))
                arrays = {k: npz[k] for k in npz.files if k != "__meta__"}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError):
            raise UsageError(f"--resume file {self.path} is not a shiftaudit audit state (or is damaged); delete it to start over.") from None
        if meta.get("format") != STATE_FORMAT or meta.get("version") != STATE_VERSION:
            raise UsageError(f"--resume file {self.path} is not a shiftaudit audit state of this version; delete it to start over.")
        if meta.get("fingerprint") != self.fingerprint:
            raise UsageError(
                f"--resume file {self.path} belongs to a different audit (another model, data, shift set or seed); "
                "delete it or choose another path."
            )
        names = [m.name for m in metric_list]
        if meta.get("metrics") != names:
            raise UsageError(f"--resume file {self.path} holds other metrics than this run; delete it to start over.")
        for m in metric_list:
            prefix = f"{m.name}/"
            m.load_state_dict({k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)})
        self._done = [arrays.get("__done__", np.zeros(0, dtype=np.int64)).astype(np.int64)]
        self.counters.update({k: int(v) for k, v in meta.get("counters", {}).items()})
        self.resumed = True
        return True

    @property
    def done_ids(self) -> np.ndarray:
        if len(self._done) != 1:
            self._done = [np.concatenate(self._done) if self._done else np.zeros(0, dtype=np.int64)]
        return self._done[0]

    def remaining(self, n: int) -> np.ndarray:
        """Dataset positions still to audit, in order."""
        todo = np.ones(n, dtype=bool)
        todo[self.done_ids[self.done_ids < n]] = False
        return np.flatnonzero(todo).astype(np.int64)

    def record(self, ids: np.ndarray, metric_list: list[Metric], *, images_done: int, nonfinite_images: int,
               rows: int, force: bool = False) -> None:
        self._done.append(ids.astype(np.int64))
        self.counters = {"images_done": images_done, "nonfinite_images": nonfinite_images, "rows": rows}
        if force or time.monotonic() - self._last_save >= self.interval:
            self.save(metric_list)

    def save(self, metric_list: list[Metric]) -> None:
        arrays: dict[str, np.ndarray] = {"__done__": self.done_ids}
        for m in metric_list:
            for k, v in m.state_dict().items():
                arrays[f"{m.name}/{k}"] = np.asarray(v)
        meta = {"format": STATE_FORMAT, "version": STATE_VERSION, "fingerprint": self.fingerprint,
                "metrics": [m.name for m in metric_list], "counters": self.counters}
        buf = io.BytesIO()
        np.savez(buf, __meta__=np.array(json.dumps(meta)), **arrays)
        write_bytes_atomic(self.path, buf.getvalue())
        self._last_save = time.monotonic()


def resume_state(path: str | Path, model: nn.Module, info: dict[str, Any], dataset: Any, shifts: ShiftSet,
                 exhaustive: bool, pairs: int, seed: int, precision: str, metric_list: list[Metric],
                 observers: list[Observer], dist: Any) -> Any:
    """The state file of a resumable run, with what it already holds loaded into the accumulators."""
    if observers:
        raise UsageError("--resume cannot be combined with --layers: per-layer distances are not saved as the audit goes.")
    if dist is not None:
        raise UsageError("--resume is for single-process runs; under torchrun, rerun the whole audit.")
    weights = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        weights.update(name.encode())
        weights.update(tensor.detach().float().cpu().numpy().tobytes())
    parts = {
        "weights": weights.hexdigest(),
        "model": {k: v for k, v in info.items() if k in ("arch", "num_classes", "patch")},
        "data": [getattr(dataset, "description", ""), len(dataset), list(getattr(dataset, "image_size", [])),
                 bool(getattr(dataset, "has_labels", False))],
        "shifts": shifts.to_json(),
        "exhaustive": exhaustive,
        "pairs": pairs,
        "seed": seed,
        "precision": precision,
    }
    state = ResumeState(path, fingerprint(parts))
    state.load_into(metric_list)
    return state


def subset_loader(dataset: Any, indices: np.ndarray, batch_size: int, num_workers: int | None, pin: bool) -> Any:
    """The usual loader over some dataset positions (the images a resumed run still needs); ids stay positions."""
    from .data import make_loader

    return make_loader(dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=pin, indices=indices.tolist())
