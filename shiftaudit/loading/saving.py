"""Write a model so that ``load_model(path)`` rebuilds it with no flags: safetensors + metadata, a torch.export
archive (``.pt2``, the graph and weights together: runs wherever torch runs) or TorchScript (deprecated by torch,
kept for readers that need it)."""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shiftaudit.data.presets import Preprocessing
from shiftaudit.errors import UsageError, first_line
from shiftaudit.files import atomic_path
from shiftaudit.loading.formats import EXTRA_FILE
from shiftaudit.loading.metadata import encode_metadata
from shiftaudit.loading.model import LoadedModel
from shiftaudit.loading.pt2 import save_pt2
from shiftaudit.loading.state_dict import infer_num_classes

FORMATS = ("safetensors", "pt2", "torchscript")
SUFFIX_OF = {"safetensors": ".safetensors", "pt2": ".pt2", "torchscript": ".pt"}
# Suffixes that name a model format, and the formats that may be written under them: a reader (or a person) goes by
# the suffix, so a safetensors file named .pt fails torch.load, and nothing here writes ONNX.
SUFFIX_FORMATS: dict[str, tuple[str, ...]] = {
    ".safetensors": ("safetensors",),
    ".pt2": ("pt2",),
    ".pt": ("torchscript",),
    ".pth": ("torchscript",),
    ".onnx": (),
}
SUFFIX_READ_AS = {
    ".safetensors": "a safetensors file",
    ".pt2": "a torch.export archive",
    ".pt": "a torch.load file",
    ".pth": "a torch.load file",
}


def check_save_path(path: str | os.PathLike[str], format: str, *, flag: str = "path", format_flag: str = "format=") -> None:
    """Refuse, before any work, a destination whose suffix names a format other than the one it would be written in:
    ``.onnx`` (never written), ``.pt``/``.pth`` for safetensors or torch.export (readers would ``torch.load`` it),
    ``.pt2`` or ``.safetensors`` for another format. Other suffixes are taken as they are. ``flag``/``format_flag``:
    how the message names the destination and the format (the CLI passes ``--output`` and ``--format ``)."""
    p = Path(path)
    suffix = p.suffix.lower()
    allowed = SUFFIX_FORMATS.get(suffix)
    if allowed is None or format in allowed:
        return
    if not allowed:
        raise UsageError(
            f"{flag} {p} ends in {suffix}, but shiftaudit writes safetensors, torch.export (.pt2) or TorchScript, not "
            f"ONNX; name it {p.with_suffix('.pt2').name} (torch.onnx.export turns that model into ONNX)."
        )
    raise UsageError(
        f"{flag} {p} ends in {suffix}, which names {SUFFIX_READ_AS[suffix]}, but it would be written as {format}; name it "
        f"{p.with_suffix(SUFFIX_OF[format]).name}, or pass {format_flag}{allowed[0]}."
    )


def _plain_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors with no shared storage (safetensors refuses tied/aliased tensors)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, t in model.state_dict().items():
        t = t.detach()
        if t.device.type == "meta":
            raise UsageError(f"Cannot save {key}: the model has no real weights (meta device).")
        t = t.cpu()
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in seen or storage.nbytes() != t.numel() * t.element_size():
            t = t.clone(memory_format=torch.contiguous_format)  # tied weights, or a view into a larger buffer
        elif not t.is_contiguous():
            t = t.contiguous()
        if ptr:
            seen.add(ptr)
        out[key] = t
    return out


def save_model(
    loaded_or_module: LoadedModel | nn.Module,
    path: str | os.PathLike[str],
    *,
    format: str = "safetensors",
    arch: str | None = None,
    num_classes: int | None = None,
    preprocessing: Preprocessing | dict[str, Any] | None = None,
    class_names: list[str] | None = None,
    patch_spec: dict[str, Any] | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    extra_metadata: dict[str, Any] | None = None,
) -> Path:
    """Save atomically; values not given are taken from a :class:`LoadedModel` when one is passed."""
    if format not in FORMATS:
        raise UsageError(f"Unknown save format {format!r}; use one of {', '.join(FORMATS)}.")
    check_save_path(path, format)
    if isinstance(loaded_or_module, LoadedModel):
        lm = loaded_or_module
        model = lm.model
        arch = arch if arch is not None else lm.arch
        num_classes = num_classes if num_classes is not None else lm.num_classes
        preprocessing = preprocessing if preprocessing is not None else lm.preprocessing
        class_names = class_names if class_names is not None else lm.class_names
        patch_spec = patch_spec if patch_spec is not None else lm.patch_spec
        arch_kwargs = arch_kwargs if arch_kwargs is not None else lm.arch_kwargs
    elif isinstance(loaded_or_module, nn.Module):
        model = loaded_or_module
    else:
        raise UsageError(f"save_model() needs an nn.Module or LoadedModel, got {type(loaded_or_module).__name__}.")
    if num_classes is None and not isinstance(model, torch.jit.ScriptModule):
        num_classes, _ = infer_num_classes(model.state_dict())
    metadata = encode_metadata(
        arch=arch,
        num_classes=num_classes,
        arch_kwargs=arch_kwargs,
        preprocessing=preprocessing,
        class_names=class_names,
        patch_spec=patch_spec,
        extra=extra_metadata,
    )
    dest = Path(path)
    if format == "safetensors":
        from safetensors.torch import save_file

        tensors = _plain_tensors(model)
        with atomic_path(dest, suffix=".safetensors") as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
    elif format == "pt2":
        prep = Preprocessing.from_json(preprocessing) if isinstance(preprocessing, dict) else preprocessing
        size, channels = (prep.size, prep.channels) if prep is not None else ((224, 224), 3)
        with atomic_path(dest, suffix=".pt2") as tmp:
            save_pt2(model, tmp, channels=channels, size=size, metadata=metadata)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit deprecation notices
            scripted = _to_torchscript(model, preprocessing)
        buffer = io.BytesIO()  # in memory: the archive's folder is torch's "archive", not the temporary file's name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(scripted, buffer, _extra_files={EXTRA_FILE: json.dumps(metadata)})
        with atomic_path(dest, suffix=".pt") as tmp:
            tmp.write_bytes(buffer.getvalue())
    return dest


def _to_torchscript(model: nn.Module, preprocessing: Preprocessing | dict[str, Any] | None) -> torch.jit.ScriptModule:
    if isinstance(model, torch.jit.ScriptModule):
        return model
    was_training = model.training
    model = model.eval()
    try:
        try:
            return torch.jit.script(model)
        except Exception:
            prep = Preprocessing.from_json(preprocessing) if isinstance(preprocessing, dict) else preprocessing
            h, w = prep.size if prep is not None else (224, 224)
            c = prep.channels if prep is not None else 3
            param = next(model.parameters(), None)
            example = torch.zeros(1, c, h, w, device=param.device if param is not None else "cpu")
            try:
                with torch.no_grad():
                    return torch.jit.trace(model, example, check_trace=False)
            except Exception as exc:
                line = first_line(exc)
                raise UsageError(
                    f"Cannot export the model to TorchScript (scripting and tracing failed: {line[:200]})."
                ) from None
    finally:
        model.train(was_training)
