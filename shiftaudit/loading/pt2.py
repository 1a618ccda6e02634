"""torch.export archives (``.pt2``): read one without running code from it, and write a patched model as one.

``torch.export.load`` is not a plain data reader: an archive may hold pickled weights or constants (read with full
unpickling), AOTInductor shared libraries, guard code compiled into Python, sympy expressions (parsed with ``eval``)
and call targets looked up by name under ``torch``. :func:`untrusted_content` reads the archive's JSON first and
names the first of these it finds; only an archive with none of them (every weight raw bytes, every call an ATen
operator, every shape expression plain arithmetic on size symbols) loads without ``--trust-pickle``. Archives that
:func:`save_pt2` writes are of that kind, so ``shiftaudit eval patched.pt2`` needs no flag.
"""

from __future__ import annotations

import io
import json
import re
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shiftaudit.errors import CheckpointError, UsageError, first_line
from shiftaudit.loading.formats import EXTRA_FILE, archive_metadata  # our metadata: torch.export.save(extra_files=...)

MAX_JSON_BYTES = 256 * 2**20  # the graph of a large model is tens of MiB of JSON
MAX_BATCH = 4096  # the exported batch axis runs from 1 to this

# Call targets a graph may name: ATen and prims operators, and arithmetic or indexing from Python's operator module.
_SAFE_TARGETS = re.compile(
    r"torch\.ops\.(aten|prims)\.\w+\.\w+|_operator\.(getitem|add|sub|mul|truediv|floordiv|mod|pow|neg|pos|abs|eq|ne|lt|le|gt"
    r"|ge|and_|or_|not_)"
)
_UNSAFE_OPS = {"from_file"}  # aten operators that touch the file system
# Shape expressions are parsed by sympy (eval): only size symbols, numbers, arithmetic and sympy's integer helpers.
_EXPR_TOKEN = re.compile(r"\s*(?:'[su]\d+'|[A-Za-z]\w*|\d+(?:\.\d+)?|\*\*|//|[-+*/%(),=<>!])")
_EXPR_NAMES = {
    "Symbol", "Integer", "Rational", "positive", "integer", "real", "True", "False", "Max", "Min", "Mod", "FloorDiv",
    "CeilDiv", "CleanDiv", "ModularIndexing", "PythonMod", "FloorToInt", "CeilToInt", "Eq", "Ne", "Ge", "Gt", "Le", "Lt",
}


def _is_expr_name(name: str) -> bool:
    return name in _EXPR_NAMES or re.fullmatch(r"[su]\d+", name) is not None


def _safe_expr(text: str) -> bool:
    pos = 0
    while pos < len(text):
        m = _EXPR_TOKEN.match(text, pos)
        if m is None:
            return False
        token = m.group().strip()
        if token[:1].isalpha() and not _is_expr_name(token):
            return False
        pos = m.end()
    return True


def _walk(node: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair of parsed JSON, without recursion (a hostile file must not exhaust the stack)."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                yield key, value
                stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)


def _read_json(zf: zipfile.ZipFile, name: str) -> Any:
    info = zf.getinfo(name)
    if info.file_size > MAX_JSON_BYTES:
        raise ValueError(f"{name} is larger than {MAX_JSON_BYTES // 2**20} MiB")
    return json.loads(zf.read(name))


def untrusted_content(path: Path) -> str | None:
    """What in the archive could run code when torch loads it (a few words), or None when it is plain data."""
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        roots = {n.split("/", 1)[0] for n in names}
        if len(roots) != 1 or any("/" not in n for n in names):
            return "files outside one archive folder (the old torch.export layout, read with full unpickling)"
        root = roots.pop() + "/"
        inner = {n[len(root):] for n in names}
        if _read_text(zf, root + "archive_format") != "pt2":
            return "an archive format other than pt2"
        models = sorted(n for n in inner if n.startswith("models/"))
        if models != ["models/model.json"]:
            return f"{len(models)} programs where one (models/model.json) is expected"
        for name in sorted(inner):
            if name.startswith(("data/aotinductor/", "data/executorch/", "data/mtia", "xl_model_weights/")):
                return f"compiled code or external weights ({name})"
            if name in ("data/weights/model.pt", "data/constants/model.pt"):
                return f"pickled tensors ({name})"
        for config in ("data/weights/model_weights_config.json", "data/constants/model_constants_config.json"):
            if config not in inner:
                return f"no {config}"
            entries = _read_json(zf, root + config).get("config", {})
            for fqn, meta in entries.items():
                if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
                    return f"a pickled payload ({fqn})"
                if config.startswith("data/constants/") and not str(meta.get("path_name", "")).startswith("tensor_"):
                    return f"a pickled Python object ({fqn})"
        program = _read_json(zf, root + "models/model.json")
        if program.get("guards_code"):
            return "guard code that torch compiles and runs"
        for key, value in _walk(program):
            if key == "target" and isinstance(value, str):
                m = _SAFE_TARGETS.fullmatch(value)
                if m is None or value.split(".")[-2] in _UNSAFE_OPS:
                    return f"a call to {value[:80]}, which is not an ATen operator"
            elif key == "custom_obj_values" and value:
                return "custom Python objects"
            elif key == "expr_str" and isinstance(value, str) and not _safe_expr(value):
                return f"a shape expression that is not plain arithmetic ({value[:60]})"
        sample = root + "data/sample_inputs/model.pt"
        if sample in names:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    torch.load(io.BytesIO(zf.read(sample)), weights_only=True)
            except Exception:  # noqa: BLE001 - torch would retry with full unpickling
                return "sample inputs that need full unpickling"
    return None


def _read_text(zf: zipfile.ZipFile, name: str) -> str | None:
    try:
        return zf.read(name).decode("utf-8", "replace").strip()
    except KeyError:
        return None


class ExportedModel(nn.Module):
    """The module of a loaded ``.pt2`` archive. ``torch.export`` fixes the graph in the mode it was exported in and
    refuses ``train()``/``eval()`` on it, which every caller of a model makes: here they only set the flag. Its
    layers are one flat graph of operators, with no modules to hook for per-layer distances."""

    flat_graph = "a torch.export archive (one flat graph of operators)"

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph = graph

    def forward(self, x: torch.Tensor) -> Any:
        return self.graph(x)

    def train(self, mode: bool = True) -> ExportedModel:
        self.training = mode
        return self


def read_pt2(path: Path, *, trust_pickle: bool = False) -> tuple[ExportedModel, dict[str, str], int | None]:
    """The archive's module on the CPU, its shiftaudit metadata, and the class count its output shape fixes."""
    try:
        why = untrusted_content(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError, AttributeError, TypeError, RecursionError) as exc:
        raise CheckpointError(f"torch.export archive {path} is damaged ({first_line(exc)[:200].rstrip('.')}).") from None
    if why is not None and not trust_pickle:
        raise CheckpointError(
            f"torch.export archive {path} holds {why}; loading it can run code from the file. Pass --trust-pickle if you "
            "trust it."
        )
    extra: dict[str, Any] = {EXTRA_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.load(str(path), extra_files=extra)
            module = program.module()
    except Exception as exc:
        raise CheckpointError(
            f"torch.export archive {path} cannot be loaded ({first_line(exc)[:200].rstrip('.')}); it is damaged or from an "
            "incompatible torch, so re-export it."
        ) from None
    raw = archive_metadata(extra, f"torch.export archive {path}")
    return ExportedModel(module).to("cpu"), raw, _output_classes(program)


def _output_classes(program: Any) -> int | None:
    """The last axis of the program's one output when it is a fixed (batch, classes) tensor."""
    try:
        out = next(n for n in program.graph.nodes if n.op == "output").args[0]
        val = out[0].meta.get("val") if isinstance(out, (list, tuple)) and len(out) == 1 else None
        shape = tuple(val.shape) if val is not None else ()
        return int(shape[1]) if len(shape) == 2 and isinstance(shape[1], int) else None
    except Exception:  # noqa: BLE001 - a class count is a nicety
        return None


def save_pt2(model: nn.Module, dest: Path, *, channels: int, size: tuple[int, int], metadata: dict[str, str]) -> None:
    """Export ``model`` (eval mode, CPU) for (N, channels, H, W) inputs with any batch N up to :data:`MAX_BATCH` and
    write it to ``dest`` with our metadata inside; buffers (the blur filters) travel with the graph."""
    was_training = model.training
    model = model.eval()
    param = next(model.parameters(), None)
    example = torch.zeros(2, channels, *size, device=param.device if param is not None else "cpu")
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    except Exception as exc:
        raise UsageError(
            f"Cannot export the model with torch.export ({first_line(exc)[:200].rstrip('.')}); save it as safetensors."
        ) from None
    finally:
        model.train(was_training)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(program, str(dest), extra_files={EXTRA_FILE: json.dumps(metadata)})
