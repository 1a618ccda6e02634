"""Resumable audits: the metric accumulators' state, saved as the audit goes, so an interrupted run continues.

Every metric keeps per-image values keyed by image id, or sums (see :meth:`Metric.state_dict`), and is updated
only with whole batches. Saving those states with the ids already done, and loading them into fresh accumulators
later, therefore gives exactly the accumulators of an uninterrupted run once the remaining images are added: the
final JSON is the same. The state file also records a fingerprint of the run, part by part: everything that changes
a number (model weights, the data's files, preprocessing, class map, shift set and canvas, seed, pairs, precision,
device, batch size, engine, the package version). A continuation whose parts differ is refused with one sentence
naming what changed, so two different audits are never mixed into one report.

:func:`resume_state` builds that fingerprint for an audit and loads the saved state; :func:`subset_loader` feeds the
engine only the images still to do.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sized
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from shiftaudit.data import make_loader
from shiftaudit.errors import UsageError
from shiftaudit.files import check_destination, node_kind, write_bytes_atomic
from shiftaudit.metrics.base import Metric
from shiftaudit.npyfiles import load_numpy

if TYPE_CHECKING:
    from torch import nn

    from shiftaudit.data.dataset import AuditDataset
    from shiftaudit.data.loader import AuditLoader
    from shiftaudit.engine.distributed import DistContext
    from shiftaudit.engine.observers import Observer
    from shiftaudit.shifts.sets import ShiftSet

STATE_FORMAT = "shiftaudit/audit-state"
STATE_VERSION = 2  # 2: the fingerprint is stored part by part, so a refusal can name what changed
SHORT = 120  # parts up to this long (as JSON) are stored as they are, so the refusal can show old and new


def _digest(chunks: Iterable[object]) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk if isinstance(chunk, (bytes, memoryview)) else str(chunk).encode())
        h.update(b"\0")
    return "sha256:" + h.hexdigest()


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw bytes of a tensor (any dtype, bfloat16 included), without converting its values."""
    t = t.detach().cpu().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().data if t.numel() else memoryview(b"")


def weights_digest(model: nn.Module) -> str:
    """Every parameter and buffer: name, dtype, shape and bytes."""

    def chunks() -> Iterator[object]:
        for name, t in sorted(model.state_dict().items()):
            if isinstance(t, torch.Tensor) and not t.is_meta:
                yield from (name, t.dtype, tuple(t.shape), _tensor_bytes(t))

    return _digest(chunks())


def data_digest(dataset: Sized) -> str:
    """What the images are: each file's path, size and modification time (a file added, removed or rewritten
    changes it; reading every file would cost a pass over the data), or the bytes of a tensor stack. A torch Dataset
    in memory is known by its type and length only."""
    src = getattr(dataset, "source", None)
    files = getattr(src, "files", None)
    if files is not None:

        def stats() -> Iterator[str]:
            for f in files:
                try:
                    st = os.stat(f)
                    yield f"{f}|{st.st_size}|{st.st_mtime_ns}"
                except OSError:
                    yield f"{f}|missing"

        return _digest(stats())
    images = getattr(src, "images", None)
    if isinstance(images, torch.Tensor):
        return _digest([images.dtype, tuple(images.shape), _tensor_bytes(images)])
    return _digest([type(getattr(src, "dataset", dataset)).__name__, len(dataset)])


def fingerprint_parts(
    model: nn.Module, info: Mapping[str, object], dataset: Sized, shifts: ShiftSet, settings: Mapping[str, object]
) -> dict[str, str]:
    """Everything that changes a number of the report, part by part, keyed by what the user would change.

    A resumed run adds its images to the saved accumulators, so any difference here would silently mix scores of two
    different audits and report the settings of the second. Each value is the part as JSON when short, else a digest.
    """
    from shiftaudit import __version__  # local: read per call (tests change it)

    prep = getattr(dataset, "preprocessing", None)
    prep_json = prep.to_json() if prep is not None and hasattr(prep, "to_json") else {}
    index = np.asarray(getattr(dataset, "index", np.arange(len(dataset))), dtype=np.int64)
    labels = getattr(dataset, "labels", None)
    parts: dict[str, object] = {
        "the shiftaudit version": __version__,
        "the model weights": weights_digest(model),
        "the model (--arch, --num-classes or its patch)": {
            k: v for k, v in info.items() if k in ("arch", "num_classes", "patch")
        },
        "--data": [getattr(dataset, "description", ""), getattr(dataset, "kind", ""), len(dataset)],
        "the data's files or content (added, removed or rewritten)": data_digest(dataset),
        "the images chosen (--limit)": _digest([index.tobytes()]),
        "the labels (--class-map)": [
            bool(getattr(dataset, "has_labels", False)),
            _digest([np.asarray(labels, dtype=np.int64).tobytes()]) if labels is not None else None,
        ],
        "--preset": prep_json.get("name"),  # the report names it, so a continuation must not rename it
        "--size": prep_json.get("size"),
        "--resize": prep_json.get("resize"),
        "--mean": prep_json.get("mean"),
        "--std": prep_json.get("std"),
        "the image or crop canvas size (--shift-mode crop, --max-shift)": [
            list(getattr(dataset, "image_size", [])),
            getattr(dataset, "canvas_margin", None),
            getattr(dataset, "channels", None),
        ],
        "the shift set (--max-shift, --shift-step, --shift-mode)": [
            shifts.to_json(),
            _digest([np.asarray(shifts.dh).tobytes(), np.asarray(shifts.dw).tobytes()]),
        ],
        **settings,
    }
    out = {}
    for name, value in parts.items():
        text = json.dumps(value, sort_keys=True, default=str)
        out[name] = text if len(text) <= SHORT else _digest([text])
    return out


def check_resume_path(path: str | Path) -> Path:
    """Refuse, before any work, a --resume path that is a folder, a pipe or a link (loading it would fail or block, and
    the state is never written through a link)."""
    p = Path(path)
    kind = node_kind(p)
    if kind == "a folder":
        raise UsageError(f"--resume {p} is a folder; pass a file path for the saved progress, such as {p / 'audit-state.npz'}.")
    if kind is not None:
        raise UsageError(f"--resume {p} is {kind}, not a regular file; pass a file path for the saved progress.")
    return p


def changed_parts(path: Path, saved: Mapping[str, object], now: dict[str, str]) -> UsageError | None:
    """One sentence naming every part that differs, with old and new values when they are short and readable."""
    names = [k for k in now if saved.get(k) != now[k]] + [str(k)[:60] for k in saved if k not in now]
    if not names:
        return None
    what = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    if {"--size", "--resize", "--mean", "--std"} & set(names) and "--preset" not in names:
        what += " (directly or through --preset)"
    detail = ""
    old, new = saved.get(names[0]), now.get(names[0])
    if len(names) == 1 and all(
        isinstance(v, str) and len(v) <= SHORT and "sha256:" not in v and v.isprintable() for v in (old, new)
    ):
        detail = f" (was {old}, now {new})"
    return UsageError(
        f"Cannot resume: {what} changed since the run saved in {path}{detail}; delete that file or drop --resume to start over."
    )


class ResumeState:
    """Loads an existing state file (if any) and saves the current one, at most every ``interval`` seconds."""

    def __init__(
        self, path: str | Path, parts: dict[str, str], interval: float = 20.0, dataset: AuditDataset | None = None
    ) -> None:
        self.path = check_resume_path(path)
        self.parts = parts
        self.dataset = dataset  # its decode flags (converted, unreadable, NaN pixels) are saved too: the notes need them
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
            arrays = load_numpy(self.path)
            if not isinstance(arrays, dict):
                raise ValueError("not an archive")
            meta = json.loads(str(arrays.pop("__meta__")))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError):
            raise UsageError(
                f"--resume file {self.path} is not a shiftaudit audit state (or is damaged); delete it to start over."
            ) from None
        if meta.get("format") != STATE_FORMAT or meta.get("version") != STATE_VERSION or not isinstance(meta.get("parts"), dict):
            raise UsageError(
                f"--resume file {self.path} is not a shiftaudit audit state of this version; delete it to start over."
            )
        changed = changed_parts(self.path, meta["parts"], self.parts)
        if changed is not None:
            raise changed
        for m in metric_list:
            prefix = f"{m.name}/"
            m.load_state_dict({k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)})
        self._done = [arrays.get("__done__", np.zeros(0, dtype=np.int64)).astype(np.int64)]
        flags = arrays.get("__flags__")
        if flags is not None and self.dataset is not None and len(flags) == len(self.dataset):
            self.dataset.record(np.flatnonzero(flags), flags[flags != 0])
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

    def record(
        self,
        ids: np.ndarray,
        metric_list: list[Metric],
        *,
        images_done: int,
        nonfinite_images: int,
        rows: int,
        force: bool = False,
    ) -> None:
        self._done.append(ids.astype(np.int64))
        self.counters = {"images_done": images_done, "nonfinite_images": nonfinite_images, "rows": rows}
        if force or time.monotonic() - self._last_save >= self.interval:
            self.save(metric_list)

    def save(self, metric_list: list[Metric]) -> None:
        arrays: dict[str, np.ndarray] = {"__done__": self.done_ids}
        if self.dataset is not None and hasattr(self.dataset, "_flags"):
            arrays["__flags__"] = np.asarray(self.dataset._flags)
        for m in metric_list:
            for k, v in m.state_dict().items():
                arrays[f"{m.name}/{k}"] = np.asarray(v)
        meta = {"format": STATE_FORMAT, "version": STATE_VERSION, "parts": self.parts, "counters": self.counters}
        buf = io.BytesIO()
        np.savez(buf, allow_pickle=True, __meta__=np.array(json.dumps(meta)), **arrays)
        write_bytes_atomic(self.path, buf.getvalue())
        self._last_save = time.monotonic()


def resume_state(
    path: str | Path,
    model: nn.Module,
    info: Mapping[str, object],
    dataset: AuditDataset,
    shifts: ShiftSet,
    settings: Mapping[str, object],
    metric_list: list[Metric],
    observers: list[Observer],
    dist: DistContext | None,
) -> ResumeState:
    """The state file of a resumable run, with what it already holds loaded into the accumulators.

    ``settings``: the run's numeric settings keyed by the flag that sets them (see :func:`fingerprint_parts`).
    """
    if observers:
        raise UsageError("--resume cannot be combined with --layers: per-layer distances are not saved as the audit goes.")
    if dist is not None:
        raise UsageError("--resume is for single-process runs; under torchrun, rerun the whole audit.")
    parts = fingerprint_parts(model, info, dataset, shifts, {**settings, "the metrics asked for": [m.name for m in metric_list]})
    state = ResumeState(path, parts, dataset=dataset if hasattr(dataset, "record") else None)
    state.load_into(metric_list)
    return state


def subset_loader(dataset: AuditDataset, indices: np.ndarray, batch_size: int, num_workers: int | None, pin: bool) -> AuditLoader:
    """The usual loader over some dataset positions (the images a resumed run still needs); ids stay positions."""
    return make_loader(dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=pin, indices=indices.tolist())
