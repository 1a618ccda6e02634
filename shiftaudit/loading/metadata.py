"""The ``shiftaudit.*`` string metadata stored in safetensors (and TorchScript) files we write.

Metadata comes from a file the user may have downloaded, so it is parsed as data only (``json.loads`` and
type checks), never evaluated; anything malformed is a one-sentence :class:`CheckpointError`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from shiftaudit.data.presets import Preprocessing
from shiftaudit.errors import CheckpointError, ShiftAuditError

FORMAT_VERSION = "1"
PREFIX = "shiftaudit."
KEYS = ("format", "arch", "num_classes", "arch_kwargs", "preprocessing", "class_names", "patch")
MAX_VALUE_CHARS = 1_000_000  # far above anything we write (class names of 22k ImageNet classes fit)
MAX_DEPTH = 32  # patch specs nest a few levels; deeper JSON is hostile or broken


def json_depth(obj: Any) -> int:
    """Nesting depth of parsed JSON, computed without recursion (a hostile value must not exhaust the stack)."""
    depth, stack = 0, [(obj, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, (dict, list)):
            depth = max(depth, d)
            if depth > MAX_DEPTH:
                return depth
            stack.extend((v, d + 1) for v in (node.values() if isinstance(node, dict) else node))
    return depth


def bounded_json(text: str, what: str) -> Any:
    """``json.loads`` for text from a file we do not trust: size- and depth-limited, never evaluated.

    ``what`` names the value in the error ("Checkpoint x has malformed metadata: shiftaudit.patch").
    """
    if len(text) > MAX_VALUE_CHARS:
        raise CheckpointError(f"{what} is {len(text):,} characters long, more than the {MAX_VALUE_CHARS:,} allowed.")
    try:
        value = json.loads(text)
    except RecursionError:
        raise CheckpointError(f"{what} is nested too deeply to be metadata.") from None
    except (TypeError, ValueError):
        raise CheckpointError(f"{what} is not valid JSON.") from None
    if json_depth(value) > MAX_DEPTH:
        raise CheckpointError(f"{what} is nested too deeply to be metadata (more than {MAX_DEPTH} levels).")
    return value


@dataclass
class CheckpointMetadata:
    arch: str | None = None
    num_classes: int | None = None
    arch_kwargs: dict[str, Any] | None = None
    preprocessing: Preprocessing | None = None
    class_names: list[str] | None = None
    patch_spec: dict[str, Any] | None = None
    present: bool = False  # the file carries our metadata at all

    @property
    def empty(self) -> bool:
        return not self.present


def _json(raw: dict[str, str], key: str, source: str) -> Any:
    text = raw.get(PREFIX + key)
    if text is None:
        return None
    return bounded_json(text, f"Checkpoint {source} has malformed metadata: {PREFIX}{key}")


def parse_metadata(raw: dict[str, str] | None, source: str) -> CheckpointMetadata:
    """Validate and decode the ``shiftaudit.*`` entries of ``raw``; other entries are ignored."""
    raw = dict(raw or {})
    meta = CheckpointMetadata(present=any(k.startswith(PREFIX) for k in raw))
    if not meta.present:
        return meta
    _check_sizes(raw, source)
    _check_format(raw, source)
    _parse_model_entries(raw, source, meta)
    _parse_data_entries(raw, source, meta)
    return meta


def _bad(source: str, key: str, what: str) -> CheckpointError:
    return CheckpointError(f"Checkpoint {source} has malformed metadata: {PREFIX}{key} {what}.")


def _check_sizes(raw: dict[str, str], source: str) -> None:
    """Every entry of ours is a string of bounded length, checked before any is decoded (the file is untrusted)."""
    for key in KEYS:
        value = raw.get(PREFIX + key)
        if value is not None and not isinstance(value, str):
            raise _bad(source, key, f"is a {type(value).__name__}, not a string")
        if value is not None and len(value) > MAX_VALUE_CHARS:
            raise _bad(source, key, f"is {len(value):,} characters long, more than the {MAX_VALUE_CHARS:,} allowed")


def _check_format(raw: dict[str, str], source: str) -> None:
    """A metadata format newer than this version is refused rather than half read."""
    version = raw.get(PREFIX + "format", FORMAT_VERSION)
    if not str(version).isdigit():
        raise _bad(source, "format", f"is {version!r}, not a version number")
    if int(version) > int(FORMAT_VERSION):
        raise CheckpointError(
            f"Checkpoint {source} was written by a newer shiftaudit (metadata format {version}); upgrade shiftaudit to read it."
        )


def _parse_model_entries(raw: dict[str, str], source: str, meta: CheckpointMetadata) -> None:
    """The entries that build the model (arch, num_classes, arch_kwargs), into ``meta``."""
    arch = raw.get(PREFIX + "arch")
    if arch is not None:
        if not isinstance(arch, str) or not arch.strip():
            raise _bad(source, "arch", "is empty")
        meta.arch = arch.strip()

    n = raw.get(PREFIX + "num_classes")
    if n is not None and str(n).strip() not in ("", "null", "None"):
        try:
            meta.num_classes = int(str(n).strip())
        except ValueError:
            raise _bad(source, "num_classes", f"is {n!r}, not an integer") from None
        if meta.num_classes < 1:
            raise _bad(source, "num_classes", "is not positive")

    kwargs = _json(raw, "arch_kwargs", source)
    if kwargs is not None:
        if not isinstance(kwargs, dict) or not all(
            isinstance(k, str) and k.isidentifier() and not k.startswith("_") for k in kwargs
        ):
            raise _bad(source, "arch_kwargs", "is not an object of keyword arguments")
        if "num_classes" in kwargs:
            raise _bad(source, "arch_kwargs", "sets num_classes, which belongs in shiftaudit.num_classes")
        meta.arch_kwargs = kwargs


def _parse_data_entries(raw: dict[str, str], source: str, meta: CheckpointMetadata) -> None:
    """The entries that describe the inputs and outputs (preprocessing, class names) and the patch, into ``meta``."""
    prep = _json(raw, "preprocessing", source)
    if prep is not None:
        if not isinstance(prep, dict):
            raise _bad(source, "preprocessing", "is not an object")
        try:
            meta.preprocessing = Preprocessing.from_json(prep)
        except ShiftAuditError as exc:
            raise _bad(source, "preprocessing", f"is invalid ({exc.message.rstrip('.')})") from None

    names = _json(raw, "class_names", source)
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(v, str) for v in names):
            raise _bad(source, "class_names", "is not a list of strings")
        meta.class_names = names

    patch = _json(raw, "patch", source)
    if patch is not None:
        if not isinstance(patch, dict):
            raise _bad(source, "patch", "is not an object")
        meta.patch_spec = patch


def encode_metadata(
    *,
    arch: str | None,
    num_classes: int | None,
    arch_kwargs: dict[str, Any] | None,
    preprocessing: Preprocessing | dict[str, Any] | None,
    class_names: list[str] | None,
    patch_spec: dict[str, Any] | None,
    extra: dict[str, Any] | None = None,
) -> dict[str, str]:
    """The string->string map safetensors stores; JSON for anything structured."""
    out: dict[str, str] = {PREFIX + "format": FORMAT_VERSION}
    if arch:
        out[PREFIX + "arch"] = str(arch)
    if num_classes is not None:
        out[PREFIX + "num_classes"] = str(int(num_classes))
    if arch_kwargs:
        out[PREFIX + "arch_kwargs"] = json.dumps(arch_kwargs, sort_keys=True)
    if preprocessing is not None:
        d = preprocessing.to_json() if isinstance(preprocessing, Preprocessing) else dict(preprocessing)
        out[PREFIX + "preprocessing"] = json.dumps(d, sort_keys=True)
    if class_names is not None:
        out[PREFIX + "class_names"] = json.dumps([str(c) for c in class_names])
    if patch_spec is not None:
        out[PREFIX + "patch"] = json.dumps(patch_spec, sort_keys=True)
    for key, value in (extra or {}).items():
        out[str(key)] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return out
