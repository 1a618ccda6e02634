"""Recognise a checkpoint file by its content (not its extension) and read it without running its code.

``torch.save`` files (zip or legacy pickle) are read with ``weights_only=True``; a file that needs arbitrary
unpickling is only opened when the user says they trust it. Every failure is one sentence naming the file.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from shiftaudit.errors import CheckpointError, first_line
from shiftaudit.files import Refused, mapped, open_regular, read_regular, reason
from shiftaudit.loading.metadata import bounded_json
from shiftaudit.ziparchive import ZipArchive, ZipStructureError

TORCH_ZIP = "torch-zip"
TORCH_LEGACY = "torch-legacy"
TORCHSCRIPT = "torchscript"
SAFETENSORS = "safetensors"
PT2 = "pt2"  # a torch.export archive (torch.export.save)
ONNX = "onnx"

EXTRA_FILE = "shiftaudit.json"  # metadata inside TorchScript archives we write


def _first_line(exc: BaseException) -> str:
    return first_line(exc).strip()[:200].rstrip(".")


def check_file(path: str | os.PathLike[str]) -> Path:
    """The path as a readable, non-empty regular file, or a one-sentence error."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise CheckpointError(f"Checkpoint path {p} is a directory, expected a checkpoint file.")
    try:
        with open_regular(p) as (_, size):  # a FIFO or device would block or never end when read
            pass
    except Refused as exc:
        raise CheckpointError(f"Checkpoint file {p} {exc}.") from None
    if size == 0:
        raise CheckpointError(f"Checkpoint file {p} is empty.")
    return p


def _zip_names(path: Path) -> list[str]:
    """The member names of a zip checkpoint as torch's reader sees them; an archive that zip readers could read
    differently (or a damaged one) is refused here, before any loader opens it."""
    try:
        with mapped(path) as buf, ZipArchive(buf) as archive:
            return archive.names
    except OSError as exc:
        raise CheckpointError(f"Cannot read checkpoint {path}: {reason(exc)}.") from None
    except ZipStructureError as exc:
        raise CheckpointError(
            f"Checkpoint {path} is a truncated or corrupt zip archive, or one that zip readers could read differently "
            f"({exc}); re-download or re-save it."
        ) from None


def _describe(head: bytes) -> str:
    """A guess at what a non-checkpoint file is, for the error message."""
    if head.startswith(b"\x89PNG"):
        return "a PNG image"
    if head.startswith(b"\xff\xd8\xff"):
        return "a JPEG image"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "a GIF image"
    if head.startswith(b"\x93NUMPY"):
        return "a NumPy array file"
    if head.startswith(b"\x1f\x8b"):
        return "a gzip archive"
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file (Keras?)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "an unrecognised binary file"
    if text.lstrip().startswith(("{", "[")):
        return "a JSON/text file"
    return "a text file" if text.isprintable() or "\n" in text else "an unrecognised binary file"


def sniff_format(path: Path) -> str:
    """One of ``torch-zip``, ``torchscript``, ``torch-legacy``, ``safetensors``, or a :class:`CheckpointError`."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(64)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        names = _zip_names(path)
        if any(n.endswith("/archive_format") or n == "archive_format" for n in names):
            return PT2
        if any(n.endswith("/constants.pkl") or n == "constants.pkl" or "/code/" in n for n in names):
            return TORCHSCRIPT
        if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return TORCH_ZIP
        raise CheckpointError(f"Checkpoint {path} is a zip archive but not a PyTorch checkpoint (it has no data.pkl).")
    if len(head) >= 10:
        header_len = int.from_bytes(head[:8], "little")
        if 2 <= header_len <= size - 8 and head[8:9] == b"{":
            return SAFETENSORS
    if _looks_like_onnx(head):
        return ONNX
    if path.suffix.lower() == ".onnx":
        raise CheckpointError(f"{path} is not a valid ONNX model (it does not start like an ONNX protobuf); re-export it.")
    if path.suffix.lower() == ".safetensors":
        if len(head) >= 9 and head[8:9] == b"{":
            raise CheckpointError(f"Checkpoint {path} is a truncated safetensors file (its header is longer than the file).")
        raise CheckpointError(f"Checkpoint {path} is not a valid safetensors file (bad header).")
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return TORCH_LEGACY
    raise CheckpointError(
        f"{path} is not a model checkpoint: it looks like {_describe(head)}, expected a .pt/.pth/.bin state dict, "
        f".safetensors, .pt2, .onnx or TorchScript file."
    )


# Fields an ONNX ModelProto may start with after ir_version (field 1, varint): producer_name (2), producer_version (3),
# domain (4), model_version (5), doc_string (6), graph (7), opset_import (8), metadata_props (14), training_info (20),
# functions (25), configuration (26): each as its protobuf tag byte (field << 3 | wire type).
_ONNX_SECOND_TAGS = (0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72, 0xA2, 0xCA, 0xD2)


def _looks_like_onnx(head: bytes) -> bool:
    """An ONNX ModelProto as every exporter writes it: ir_version first (a small varint), then another model field."""
    return len(head) >= 3 and head[0] == 0x08 and 3 <= head[1] <= 30 and head[2] in _ONNX_SECOND_TAGS


_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


def _pickled_object_error(path: Path, exc: BaseException | None = None, what: str | None = None) -> CheckpointError:
    name = what
    if name is None and exc is not None:
        m = _GLOBAL_RE.search(str(exc))
        name = m.group(1) if m else None
    detail = f" (it contains {name})" if name else ""
    return CheckpointError(
        f"Checkpoint {path} is a pickled Python object{detail}; loading it runs code from the file. "
        f"Pass --trust-pickle if you trust it."
    )


def read_torch(path: Path, *, trust_pickle: bool = False) -> tuple[Any, bool]:
    """Load a ``torch.save`` file. Returns ``(object, needed_full_unpickling)``.

    ``weights_only=True`` first: it can only produce tensors and plain containers, so an untrusted file cannot
    run code. When the file needs more (a pickled module, custom classes), refuse unless ``trust_pickle``.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "global" not in text.lower() and "weights_only" not in text and "weights only" not in text.lower():
            raise CheckpointError(f"Checkpoint {path} is corrupt or not a PyTorch checkpoint ({_first_line(exc)}).") from None
        if not trust_pickle:
            raise _pickled_object_error(path, exc) from None
        return _read_untrusted(path), True
    except CheckpointError:
        raise
    except Exception as exc:  # torch raises RuntimeError/EOFError/ValueError/... for damaged files
        raise CheckpointError(f"Checkpoint {path} is corrupt or truncated and cannot be read ({_first_line(exc)}).") from None
    if isinstance(obj, torch.nn.Module):  # only possible with custom allowlists; treat like any pickle
        if not trust_pickle:
            raise _pickled_object_error(path, what=type(obj).__qualname__)
        return obj, True
    return obj, False


def _read_untrusted(path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(str(path), map_location="cpu", weights_only=False)
    except (AttributeError, ModuleNotFoundError, ImportError) as exc:
        raise CheckpointError(
            f"Checkpoint {path} pickles a class that cannot be imported here ({_first_line(exc)}); import the module "
            f"that defines it first, or re-save the model's state_dict()."
        ) from None
    except Exception as exc:
        raise CheckpointError(f"Checkpoint {path} is corrupt or cannot be unpickled ({_first_line(exc)}).") from None


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and the raw string metadata of a safetensors file."""
    try:
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as f:
            raw = dict(f.metadata() or {})
        tensors = load_file(str(path), device="cpu")
    except Exception as exc:  # SafetensorError, OSError, ...
        raise CheckpointError(
            f"Checkpoint {path} is a corrupt or truncated safetensors file ({_first_line(exc)}); re-download or re-save it."
        ) from None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise CheckpointError(f"Checkpoint {path} has malformed safetensors metadata (values must be strings).")
    return tensors, raw


MAX_TORCHSCRIPT_BYTES = 8 * 2**30  # read whole into memory: what was checked is what torch reads


def read_torchscript(path: Path) -> tuple[torch.nn.Module, dict[str, str]]:
    """A TorchScript archive on the CPU, plus our metadata when it was written by :func:`save_model`. The file is read
    once and its structure checked (:mod:`shiftaudit.ziparchive`); torch reads those same bytes."""
    try:
        data = read_regular(path, MAX_TORCHSCRIPT_BYTES)
        ZipArchive(data)
    except Refused as exc:
        raise CheckpointError(f"TorchScript archive {path} {exc}.") from None
    except ZipStructureError as exc:
        raise CheckpointError(
            f"TorchScript archive {path} is damaged or ambiguous as a zip archive ({exc}); re-export it."
        ) from None
    extra: dict[str, Any] = {EXTRA_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notices are not the user's concern
            module = torch.jit.load(io.BytesIO(data), map_location="cpu", _extra_files=extra)
    except Exception as exc:
        raise CheckpointError(
            f"TorchScript archive {path} cannot be loaded ({_first_line(exc)}); it is damaged or from an incompatible "
            f"torch, so re-export it, or pass its weights with --arch."
        ) from None
    return module, archive_metadata(extra, f"TorchScript archive {path}")


def archive_metadata(extra: dict[str, Any], what: str) -> dict[str, str]:
    """Our metadata as read from an archive's extra file (TorchScript, torch.export): a JSON object of strings, or {}."""
    blob = extra.get(EXTRA_FILE) or ""
    if isinstance(blob, bytes):
        blob = blob.decode("utf-8", "replace")
    if not blob:
        return {}
    parsed = bounded_json(blob, f"The shiftaudit metadata in {what}")
    if not isinstance(parsed, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in parsed.items()):
        raise CheckpointError(f"{what} has malformed shiftaudit metadata (expected string values).")
    return parsed
