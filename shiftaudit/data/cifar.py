"""The CIFAR-10 python folder (``cifar-10-batches-py``), read without trusting pickle: the ``cifar10`` kind.

The official files are pickles. When their md5 sums match the published ones, torchvision's reader is used (the
content is then the known dataset). Otherwise -- a re-packed copy, a subset, a test fixture -- the test batch is
read with :class:`RestrictedUnpickler`, which can only rebuild plain containers and numpy arrays: a pickle that asks
for anything else (``os.system``, ``builtins.eval``, ...) is refused instead of executed.
"""

from __future__ import annotations

import codecs
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shiftaudit.data.dataset import TensorSource
from shiftaudit.data.kinds import DataKind, Loaded, Request, Skipped
from shiftaudit.errors import DataError

BATCHES_DIR = "cifar-10-batches-py"
TEST_BATCH = "test_batch"
META = "batches.meta"


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes; only the latin-1 round trip is allowed."""
    if encoding.replace("-", "").replace("_", "").lower() not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"encoding {encoding!r} is not allowed")
    return codecs.encode(obj, "latin-1", errors)


def _allowed() -> dict[tuple[str, str], Any]:
    try:  # numpy >= 2 keeps its internals in numpy._core; older pickles name numpy.core
        from numpy._core import multiarray, numeric
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    out: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for mod in ("numpy.core", "numpy._core"):
        out[(f"{mod}.multiarray", "_reconstruct")] = multiarray._reconstruct
        # how protocol 5 pickles an array; private, so not in numpy's type stubs
        out[(f"{mod}.numeric", "_frombuffer")] = vars(numeric)["_frombuffer"]
    return out


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes, str, numbers and numpy arrays; any other global is refused.

    The allowlist is exactly what CIFAR batches need: numpy's array reconstruction (``_reconstruct``, ``ndarray``,
    ``dtype``; ``_frombuffer`` for protocol 5) and ``_codecs.encode`` restricted to latin-1 (protocol-2 bytes).
    """

    _ALLOWED = _allowed()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a data file") from None


def restricted_load(data: bytes) -> Any:
    return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()


def find_batches_dir(path: Path) -> Path | None:
    """The ``cifar-10-batches-py`` folder for ``path`` (that folder, its parent, or any folder with a test_batch)."""
    if (path / BATCHES_DIR).is_dir():
        return path / BATCHES_DIR
    if path.is_dir() and (path.name == BATCHES_DIR or (path / TEST_BATCH).is_file()):
        return path
    return None


def _get(d: dict[Any, Any], key: str) -> Any:
    return d[key.encode()] if key.encode() in d else d.get(key)


def _read_pickle(file: Path) -> dict[Any, Any]:
    try:
        obj = restricted_load(file.read_bytes())
    except pickle.UnpicklingError as exc:
        raise DataError(f"Refused to read {file}: {exc}; CIFAR files hold only arrays and lists.") from None
    except Exception as exc:  # truncated or not a pickle at all
        raise DataError(f"Cannot read {file} as a CIFAR-10 batch: {type(exc).__name__}: {exc}.") from None
    if not isinstance(obj, dict):
        raise DataError(f"{file} is not a CIFAR-10 batch (it holds a {type(obj).__name__}, not a dict).")
    return obj


def load_cifar10_test(path: Path) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """The CIFAR-10 test set at ``path``: images (N, 32, 32, 3) uint8, labels (N,), class names, notes."""
    batches = find_batches_dir(path)
    if batches is None or not (batches / TEST_BATCH).is_file():
        raise DataError(f"No CIFAR-10 test batch in {path}: expected {BATCHES_DIR}/{TEST_BATCH}.")
    notes: list[str] = []
    try:
        from torchvision.datasets import CIFAR10

        ds = CIFAR10(str(batches.parent), train=False, download=False)
        if batches.name == BATCHES_DIR:
            return np.asarray(ds.data), np.asarray(ds.targets, dtype=np.int64), list(ds.classes), notes
    except (RuntimeError, OSError):  # torchvision says "Dataset not found or corrupted" when the md5 check fails
        pass
    notes.append(
        f"the CIFAR-10 files in {batches} do not match the official md5 checksums: read {TEST_BATCH} with a "
        "restricted unpickler (arrays and lists only)"
    )
    batch = _read_pickle(batches / TEST_BATCH)
    data, labels = _get(batch, "data"), _get(batch, "labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{batches / TEST_BATCH} has no CIFAR-10 'data' array (N x 3072 uint8); found {desc}.")
    if labels is None or len(labels) != len(data):
        raise DataError(f"{batches / TEST_BATCH} has {len(data)} images but no matching 'labels' list.")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    names: list[str] = []
    if (batches / META).is_file():
        raw_names = _get(_read_pickle(batches / META), "label_names") or []
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in raw_names]
    else:
        notes.append(f"no {META} in {batches}: classes are unnamed")
    return np.ascontiguousarray(images), np.asarray(labels, dtype=np.int64), names, notes


class Cifar10(DataKind):
    name = "cifar10"
    detect_rank = 10
    needs_preprocessing = False

    def recognises(self, path: Path, skipped: Skipped) -> bool:
        return path.is_dir() and find_batches_dir(path) is not None

    def load(self, path: Path, request: Request) -> Loaded:
        images, labels, names, notes = load_cifar10_test(path)
        prep = request.preprocessing
        channels = prep.channels if prep is not None else 3
        if channels != 3:
            notes.append(f"CIFAR-10 RGB images converted to {channels} channel{'s' if channels != 1 else ''}")
        n_classes = len(names) or len(set(labels.tolist()))
        return Loaded(
            TensorSource(torch.from_numpy(images), channels_last=True, raw=False, scale=None),
            f"CIFAR-10 test set {path}: {len(images)} images, {n_classes} classes",
            prep,
            labels=labels.tolist(),
            classes=names or None,
            notes=notes,
            image_size=prep.size if prep is not None else (32, 32),
            channels=channels,
        )
