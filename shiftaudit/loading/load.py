"""``load_model``: the one path from a checkpoint file to a ready model, shared by the CLI and the Python API."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from shiftaudit.errors import CheckpointError, UsageError
from shiftaudit.interrupts import interruptible
from shiftaudit.limits import MAX_CLASSES, check_range
from shiftaudit.loading.architectures import accepts_num_classes, build_model, canonical_arch, kind_of, timm_preprocessing
from shiftaudit.loading.formats import (
    ONNX,
    PT2,
    SAFETENSORS,
    TORCHSCRIPT,
    check_file,
    read_safetensors,
    read_torch,
    read_torchscript,
    sniff_format,
)
from shiftaudit.loading.identify import identify_architecture
from shiftaudit.loading.metadata import CheckpointMetadata, parse_metadata
from shiftaudit.loading.model import LoadedModel
from shiftaudit.loading.onnx_inspect import parameter_count
from shiftaudit.loading.onnx_model import default_preprocessing, read_onnx
from shiftaudit.loading.pt2 import read_pt2
from shiftaudit.loading.state_dict import StateDict, extract_state_dict, infer_num_classes, load_weights, strip_prefixes


def read_state_dict(path: str | os.PathLike[str]) -> tuple[StateDict, dict[str, str]]:
    """The flat state dict of a weights file (safetensors or ``torch.save``) and its raw string metadata.

    Never unpickles code: whole-model pickles and TorchScript archives are refused here.
    """
    p = check_file(path)
    kind = sniff_format(p)
    if kind == SAFETENSORS:
        tensors, raw = read_safetensors(p)
        return strip_prefixes(tensors, []), raw
    if kind in (TORCHSCRIPT, PT2, ONNX):
        what = {TORCHSCRIPT: "a TorchScript archive", PT2: "a torch.export archive", ONNX: "an ONNX model"}[kind]
        raise CheckpointError(f"{p} is {what}, not a state dict; load it with load_model().")
    obj, _ = read_torch(p, trust_pickle=False)
    sd = extract_state_dict(obj, str(p), [])
    if isinstance(sd, nn.Module):
        raise CheckpointError(f"{p} holds a whole model, not a state dict; load it with load_model().")
    return strip_prefixes(sd, []), {}


def load_model(
    path: str | os.PathLike[str] | nn.Module,
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    trust_pickle: bool = False,
    arch_kwargs: dict[str, Any] | None = None,
) -> LoadedModel:
    """Load any supported checkpoint into an eval-mode CPU model, deciding the architecture as the user would.

    The architecture comes from ``arch`` if given, else the file's shiftaudit metadata, else identification
    from the weights. Problems are raised as one-sentence :class:`CheckpointError`/:class:`UsageError`.
    """
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise UsageError(f"--num-classes must be a positive integer, got {num_classes!r}.")
    if num_classes is not None:
        check_range(num_classes, "--num-classes", 1, MAX_CLASSES, "the classifier is allocated before the weights are read")
    if isinstance(path, nn.Module):
        n, _ = infer_num_classes(path.state_dict())
        return LoadedModel(
            model=path.eval(),
            format="module",
            source=type(path).__name__,
            num_classes=num_classes or n,
            arch=arch,
            arch_source="--arch" if arch else "n/a",
        )
    p = check_file(path)
    source = str(p)
    kind = sniff_format(p)
    notes: list[str] = []

    if kind == TORCHSCRIPT:
        module, raw = read_torchscript(p)
        return _whole_model(module, "torchscript", source, parse_metadata(raw, source), arch, num_classes, notes)
    if kind in (PT2, ONNX):
        return _graph_model(p, kind, arch, num_classes, trust_pickle, notes)

    if kind == SAFETENSORS:
        tensors, raw = read_safetensors(p)
        meta = parse_metadata(raw, source)
        sd = strip_prefixes(tensors, notes)
        fmt = "safetensors"
    else:
        obj, unpickled = read_torch(p, trust_pickle=trust_pickle)
        extracted = extract_state_dict(obj, source, notes)
        if isinstance(extracted, nn.Module):
            return _whole_model(extracted, "pickle", source, CheckpointMetadata(), arch, num_classes, notes)
        if unpickled:
            notes.append("read with --trust-pickle (the file needed full unpickling)")
        meta = CheckpointMetadata()
        sd = strip_prefixes(extracted, notes)
        fmt = "state_dict"
    return _from_state_dict(sd, fmt, source, meta, arch, num_classes, arch_kwargs, notes)


def _whole_model(
    module: nn.Module,
    fmt: str,
    source: str,
    meta: CheckpointMetadata,
    arch: str | None,
    num_classes: int | None,
    notes: list[str],
) -> LoadedModel:
    if arch:
        notes.append(f"--arch {arch} ignored: the file contains the whole model")
    if fmt == "pickle":
        notes.append(f"whole pickled model of class {type(module).__module__}.{type(module).__qualname__}")
    inferred, _ = infer_num_classes(module.state_dict())
    n = meta.num_classes or inferred
    if num_classes is not None and n is not None and num_classes != n:
        raise CheckpointError(f"Checkpoint {source} has {n} classes but --num-classes {num_classes} was given.")
    module = module.to("cpu").eval()
    return LoadedModel(
        model=module,
        format=fmt,
        source=source,
        arch=meta.arch,
        num_classes=n if n is not None else num_classes,
        preprocessing=meta.preprocessing,
        patch_spec=meta.patch_spec,
        class_names=meta.class_names,
        arch_source="metadata" if meta.arch else "n/a",
        notes=notes,
    )


def _graph_model(
    p: Path, kind: str, arch: str | None, num_classes: int | None, trust_pickle: bool, notes: list[str]
) -> LoadedModel:
    """A ``.pt2`` archive or an ONNX model: a whole model whose graph fixes its class count (and, for ONNX, often
    its input size, which becomes the default preprocessing)."""
    source = str(p)
    module: nn.Module
    if kind == PT2:  # sympy and native loaders run here for seconds: Ctrl-C must not wait for them
        exported, raw, classes = interruptible(read_pt2, p, trust_pickle=trust_pickle)
        module, fmt = exported, "pt2"
        notes.extend(exported.notes)
    else:
        onnx_module, raw, classes = read_onnx(p)
        module, fmt = onnx_module, "onnx"
    meta = parse_metadata(raw, source)
    if meta.num_classes is None:
        meta.num_classes = classes
    assumed = kind == ONNX and meta.preprocessing is None
    if assumed:
        meta.preprocessing = default_preprocessing(onnx_module.input, notes)
    loaded = _whole_model(module, fmt, source, meta, arch, num_classes, notes)
    loaded.preprocessing_assumed = assumed and loaded.preprocessing is not None
    if kind == ONNX:  # onnxruntime does not say; the graph's initializers do
        loaded.parameter_count = parameter_count(p)
    return loaded


def _trusted_metadata_arch(arch: str, source: str) -> str:
    """A factory named inside a file would import and run that module: only our own package is trusted."""
    if kind_of(arch) == "factory":
        module = arch.partition(":")[0]
        if module != "shiftaudit" and not module.startswith("shiftaudit."):
            raise CheckpointError(
                f"Checkpoint {source} names the architecture factory {arch!r} from outside shiftaudit; importing it "
                f"would run that module's code, so pass --arch {arch} explicitly if you trust it."
            )
    return arch


def _from_state_dict(
    sd: StateDict,
    fmt: str,
    source: str,
    meta: CheckpointMetadata,
    arch: str | None,
    num_classes: int | None,
    arch_kwargs: dict[str, Any] | None,
    notes: list[str],
) -> LoadedModel:
    kwargs = dict(meta.arch_kwargs or {})
    kwargs.update(arch_kwargs or {})
    if "num_classes" in kwargs:
        raise UsageError("Pass the class count as num_classes=..., not inside arch_kwargs.")
    arch, arch_source, identified_n = _choose_arch(sd, meta, arch, source, notes)
    n = num_classes if num_classes is not None else meta.num_classes
    if n is None:
        n = identified_n
    if n is None:
        n, key = infer_num_classes(sd)
        if n is not None:
            notes.append(f"{n} classes, inferred from {key}")
    # an explicit --num-classes is always passed; a recorded or inferred one only where the builder takes it
    build_n = n if num_classes is not None or accepts_num_classes(arch) else None
    model = build_model(arch, build_n, **kwargs)

    patch_spec = meta.patch_spec
    if patch_spec:
        try:
            from shiftaudit.antialias import apply_patch_spec
        except ImportError:
            raise CheckpointError(
                f"Checkpoint {source} holds a patched model, and loading patched checkpoints needs shiftaudit.antialias, "
                "which is not available."
            ) from None
        model = apply_patch_spec(model, patch_spec) or model

    hint = _wrong_arch_hint(sd, arch) if arch_source == "--arch" else None
    notes += load_weights(model, sd, label=arch, source=source, hint=hint)
    model = model.to("cpu").eval()
    if n is None:
        n, _ = infer_num_classes(model.state_dict())
    preprocessing = meta.preprocessing
    if preprocessing is None and kind_of(arch) == "timm":
        preprocessing = timm_preprocessing(model, arch)
    return LoadedModel(
        model=model,
        format=fmt,
        source=source,
        arch=arch,
        arch_kwargs=kwargs or None,
        num_classes=n,
        preprocessing=preprocessing,
        patch_spec=patch_spec,
        class_names=meta.class_names,
        arch_source=arch_source,
        notes=notes,
    )


def _choose_arch(
    sd: StateDict, meta: CheckpointMetadata, arch: str | None, source: str, notes: list[str]
) -> tuple[str, str, int | None]:
    """(architecture, where it came from, class count the identification found): ``--arch`` wins over the file's
    record, and the weights are identified only when neither names one."""
    if arch:
        arch = canonical_arch(arch)
        if meta.arch and meta.arch.lower() != arch.lower():
            notes.append(f"--arch {arch} overrides the file's recorded architecture {meta.arch}")
        return arch, "--arch", None
    if meta.arch:
        return canonical_arch(_trusted_metadata_arch(meta.arch, source)), "metadata", None
    result = identify_architecture(sd)
    if result.arch is None:
        raise CheckpointError(result.explain(source))
    also = [m for m in result.matches if m != result.arch]
    notes.append(f"identified from weights as {result.arch}" + (f" (same structure as {', '.join(also[:3])})" if also else ""))
    return result.arch, "identified from weights", result.num_classes


def _wrong_arch_hint(sd: StateDict, arch: str) -> Callable[[], str | None]:
    """A function naming the architecture the weights really fit (torchvision only, so it stays quick)."""

    def hint() -> str | None:
        try:
            result = identify_architecture(sd, include_timm=False)
        except Exception:
            return None
        if result.family:
            return f"the file {result.family_message.rstrip('.')}"
        if result.arch and result.arch != arch:
            return f"the weights look like {result.arch} (leave --arch out to use it)"
        return None

    return hint
