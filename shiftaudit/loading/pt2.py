"""torch.export archives (``.pt2``): read one without running code from it, and write a patched model as one.

``torch.export.load`` is not a plain data reader: an archive may hold pickled weights or constants (read with full
unpickling), AOTInductor shared libraries, guard code compiled into Python, sympy expressions (parsed with ``eval``)
and call targets looked up by name under ``torch``. So the file is read into memory once, its zip structure is
checked the way torch's own reader will read it (:mod:`shiftaudit.ziparchive`: an archive two zip readers
could read differently is refused), :func:`untrusted_content` reads the archive's JSON from those bytes and names
the first thing that could run code, and only then are the same bytes handed to ``torch.export.load``. An archive
with none of them (every member one torch writes for a plain program, every weight raw bytes that hold the tensor
it declares, every call an ATen operator, every shape expression bounded arithmetic on size symbols) loads without
``--trust-pickle``; archives that :func:`save_pt2` writes are of that kind.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shiftaudit.errors import CheckpointError, UsageError, first_line
from shiftaudit.files import Refused, read_regular
from shiftaudit.loading.fixed_batch import run_in_batches
from shiftaudit.loading.formats import EXTRA_FILE, archive_metadata  # our metadata: torch.export.save(extra_files=...)
from shiftaudit.loading.shape_expr import ExpressionBudget, TooCostly
from shiftaudit.ziparchive import ZipArchive, ZipStructureError

MAX_ARCHIVE_BYTES = 8 * 2**30  # read whole into memory, so that the check and torch read the same bytes
MAX_JSON_BYTES = 64 * 2**20  # the graph of a resnet50 with dynamic sizes is under 1 MiB of JSON
MAX_BATCH = 4096  # the exported batch axis runs from 1 to this

# Call targets a graph may name: ATen and prims operators, and arithmetic or indexing from Python's operator module.
_SAFE_TARGETS = re.compile(
    r"torch\.ops\.(aten|prims)\.\w+\.\w+|_operator\.(getitem|add|sub|mul|truediv|floordiv|mod|pow|neg|pos|abs|eq|ne|lt|le|gt"
    r"|ge|and_|or_|not_)"
)
_UNSAFE_OPS = {"from_file"}  # aten operators that touch the file system
# Members of a plain program as torch.export.save writes them (the payload files are the ones the configs name).
_PLAIN_MEMBERS = {
    "archive_format",
    "archive_version",
    "byteorder",
    ".data/version",
    ".data/serialization_id",
    "models/model.json",
    "data/weights/model_weights_config.json",
    "data/constants/model_constants_config.json",
    "data/sample_inputs/model.pt",
}
_PAYLOADS = {"data/weights/": re.compile(r"weight_\d+"), "data/constants/": re.compile(r"tensor_\d+")}


class ArchiveDamaged(ValueError):
    """Refused whatever the user trusts: the archive declares what its data does not hold, or asks sympy for
    unbounded work. The message says what, in a few words."""


class _DuplicateKey(ValueError):
    pass


def _strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _DuplicateKey("a JSON object with a repeated key")
    return obj


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


def _read_json(archive: ZipArchive, name: str) -> Any:
    """A member parsed as torch parses it (strict UTF-8, then ``json.loads``), with repeated keys refused."""
    return json.loads(archive.read(name, MAX_JSON_BYTES).decode("utf-8"), object_pairs_hook=_strict_object)


def _dtype_sizes() -> dict[int, int]:
    from torch._export.serde.serialize import _SERIALIZE_TO_TORCH_DTYPE

    return {int(code): dtype.itemsize for code, dtype in _SERIALIZE_TO_TORCH_DTYPE.items() if isinstance(dtype, torch.dtype)}


def _ints(values: Any) -> list[int] | None:
    """The plain integers of a serialised size or stride list, or None when any is symbolic or malformed."""
    if not isinstance(values, list):
        return None
    out = [v.get("as_int") if isinstance(v, dict) and len(v) == 1 else None for v in values]
    return [v for v in out if type(v) is int and v >= 0] if all(type(v) is int and v >= 0 for v in out) else None


def _payload_problem(meta: dict[str, Any], nbytes: int, sizes: dict[int, int]) -> str | None:
    """Why a raw payload cannot hold the tensor its metadata declares (torch would allocate what it declares)."""
    tensor = meta.get("tensor_meta")
    if not isinstance(tensor, dict):
        return "no tensor description"
    shape, strides, offset = _ints(tensor.get("sizes")), _ints(tensor.get("strides")), _ints([tensor.get("storage_offset")])
    code = tensor.get("dtype")
    element = sizes.get(code) if isinstance(code, int) else None
    if shape is None or strides is None or offset is None or element is None or len(shape) != len(strides):
        return "a tensor description that is not plain sizes, strides and a dtype"
    numel = math.prod(shape)
    extent = 0 if numel == 0 else offset[0] + 1 + sum((n - 1) * st for n, st in zip(shape, strides))
    if extent * element > nbytes or nbytes % element:
        return f"a tensor of {numel:,} elements declared over {nbytes:,} bytes"
    return None


def untrusted_content(archive: ZipArchive) -> str | None:
    """What in the archive could run code when torch loads it, in a few words, or None when it is plain data.

    Raises :class:`ArchiveDamaged` for what no trust makes safe (a payload smaller than the tensor it declares, a
    shape expression beyond the grammar's bounds); the whole archive is checked for those even after a reason to
    need ``--trust-pickle`` was found."""
    reasons: list[str] = []
    names = archive.names
    root = names[0].split("/", 1)[0] + "/"  # torch takes the first member's folder as the archive's
    if any(not n.startswith(root) for n in names):
        return "files outside one archive folder (the old torch.export layout, read with full unpickling)"
    inner = {n[len(root) :] for n in names}
    if "archive_format" not in inner or archive.read(root + "archive_format", 64) != b"pt2":
        return "an archive format other than pt2"
    referenced: set[str] = set()
    dtype_sizes = _dtype_sizes()
    for config in ("data/weights/model_weights_config.json", "data/constants/model_constants_config.json"):
        if config not in inner:
            return f"no {config}"
        config_reasons, config_referenced = _payload_reasons(archive, root, config, dtype_sizes)
        reasons.extend(config_reasons)
        referenced |= config_referenced
    reasons.extend(_member_reasons(inner - referenced))
    if "models/model.json" not in inner:
        return "no program (models/model.json)"
    program = _read_json(archive, root + "models/model.json")
    if not isinstance(program, dict):
        raise ArchiveDamaged("a program that is not a JSON object")
    reasons.extend(_program_reasons(program))
    sample = root + "data/sample_inputs/model.pt"
    if not reasons and sample in archive.members and _sample_needs_unpickling(archive, sample):
        reasons.append("sample inputs that need full unpickling")
    return reasons[0] if reasons else None


def _payload_reasons(archive: ZipArchive, root: str, config: str, dtype_sizes: dict[int, int]) -> tuple[list[str], set[str]]:
    """The weights or constants a config lists: a pickled one is a reason to need ``--trust-pickle``; a missing or
    short one is damage. Returns the reasons and the members the config accounts for."""
    reasons: list[str] = []
    referenced: set[str] = set()
    folder = config.rsplit("/", 1)[0] + "/"
    entries = _read_json(archive, root + config)
    entries = entries.get("config") if isinstance(entries, dict) else None
    if not isinstance(entries, dict):
        raise ArchiveDamaged(f"a malformed {config}")
    for fqn, meta in entries.items():
        path = meta.get("path_name") if isinstance(meta, dict) else None
        if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
            reasons.append(f"a pickled payload ({fqn[:80]})")
        elif not isinstance(path, str) or not _PAYLOADS[folder].fullmatch(path):
            reasons.append(f"a pickled Python object or an unexpected payload ({fqn[:80]})")
        elif root + folder + path not in archive.members:
            raise ArchiveDamaged(f"a payload named in {config} but missing ({path})")
        else:
            problem = _payload_problem(meta, archive.members[root + folder + path].size, dtype_sizes)
            if problem is not None:
                raise ArchiveDamaged(f"{problem} ({fqn[:80]})")
            referenced.add(folder + path)
    return reasons, referenced


def _member_reasons(unreferenced: set[str]) -> list[str]:
    """Members no config accounts for: compiled code, external weights or anything a plain program does not have."""
    reasons: list[str] = []
    for name in sorted(unreferenced):
        if name in _PLAIN_MEMBERS or name.startswith("extra/"):
            continue
        if name.startswith(("data/aotinductor/", "data/executorch/", "data/mtia", "xl_model_weights/")):
            reasons.append(f"compiled code or external weights ({name[:80]})")
        elif not name.startswith(tuple(_PAYLOADS)):
            reasons.append(f"a member torch.export does not write for a plain program ({name[:80]})")
    return reasons


def _program_reasons(program: dict[str, Any]) -> list[str]:
    """What in the program would run code on load: guard code, calls outside ATen, custom objects, shape expressions
    beyond plain arithmetic. Every shape expression is costed, even after a reason was found (too costly is damage)."""
    reasons: list[str] = []
    if program.get("guards_code"):
        reasons.append("guard code that torch compiles and runs")
    budget = ExpressionBudget()
    for key, value in _walk(program):
        if key == "target" and isinstance(value, str):
            if _SAFE_TARGETS.fullmatch(value) is None or value.split(".")[-2] in _UNSAFE_OPS:
                reasons.append(f"a call to {value[:80]}, which is not an ATen operator")
        elif key == "custom_obj_values" and value:
            reasons.append("custom Python objects")
        elif key == "expr_str":
            try:
                why = budget.unsafe_reason(value) if isinstance(value, str) else "not text"
            except TooCostly as exc:
                raise ArchiveDamaged(f"a shape expression too costly to evaluate ({exc}: {str(value)[:60]})") from None
            if why is not None:
                reasons.append(f"a shape expression that is not plain arithmetic ({why}: {value[:60]})")
    return reasons


def _sample_needs_unpickling(archive: ZipArchive, sample: str) -> bool:
    """Whether the sample inputs fail to load with ``weights_only`` (torch would retry them with full unpickling)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.load(io.BytesIO(archive.read(sample, MAX_JSON_BYTES)), weights_only=True)
    except Exception:  # torch would retry with full unpickling
        return True
    return False


@contextmanager
def _quiet_torch_export() -> Iterator[None]:
    """torch.export logs a traceback (as a warning) for an archive it cannot read before raising; the user gets our
    one sentence instead."""
    loggers = [logging.getLogger(name) for name in ("torch.export", "torch._export", "torch.export.pt2_archive")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


class ExportedModel(nn.Module):
    """The module of a loaded ``.pt2`` archive. ``torch.export`` fixes the graph in the mode it was exported in and
    refuses ``train()``/``eval()`` on it, which every caller of a model makes: here they only set the flag. Its
    layers are one flat graph of operators, with no modules to hook for per-layer distances.

    A graph exported for a batch range (what ``torch.export.export(model, (x,))`` gives without ``dynamic_shapes``
    is the range [N, N]) is fed through :func:`~shiftaudit.loading.fixed_batch.run_in_batches` (ONNX graphs use it
    too): chunks no larger than its largest batch, the last one padded up to its smallest, so any engine batch runs."""

    flat_graph = "a torch.export archive (one flat graph of operators)"

    def __init__(self, graph: nn.Module, spec: InputSpec | None = None, source: str = "") -> None:
        super().__init__()
        self.graph = graph
        self.spec = spec or InputSpec()
        self.source = source

    @property
    def notes(self) -> list[str]:
        """What the report should say about how the graph was run."""
        low, high = self.spec.batch
        if low == high:
            return [
                f"the torch.export archive takes a fixed batch of {low}: rows went through it in chunks of {low}"
                + (", the last one padded" if low > 1 else "")
            ]
        return []

    def forward(self, x: torch.Tensor) -> Any:
        low, high = self.spec.batch
        if low <= x.shape[0] <= (high or x.shape[0]):
            return self.graph(x)
        return run_in_batches(self.graph, x, low, high)

    def check_input(self, channels: int, size: tuple[int, int]) -> None:
        """Refuse, before any work, images of a channel count or size the graph was exported without."""
        want = self.spec.image
        have = (channels, *size)
        if any(w is not None and w != h for w, h in zip(want, have)):
            shown = "x".join("?" if w is None else str(w) for w in want)
            hint = f"--size {want[1]}" if want[1] is not None and want[1] == want[2] else "--size and --mean/--std to match"
            raise UsageError(
                f"torch.export archive {self.source} was exported for {shown} (channels x height x width) images, but "
                f"the data is {channels}x{size[0]}x{size[1]}; pass {hint}."
            )

    def train(self, mode: bool = True) -> ExportedModel:
        self.training = mode
        return self


@dataclass(frozen=True)
class InputSpec:
    """What the archive's one image input takes: a batch range (low, high or None for no limit), and each of
    channels, height and width when the export fixed it."""

    batch: tuple[int, int | None] = (1, None)
    image: tuple[int | None, int | None, int | None] = (None, None, None)


def _input_spec(program: Any) -> InputSpec:
    """The batch range and fixed image dimensions of the program's one user input (the defaults when unclear)."""
    try:
        names = list(program.graph_signature.user_inputs)
        node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == names[0])
        shape = tuple(node.meta["val"].shape)
    except Exception:  # then every batch is tried as it comes
        return InputSpec()
    if len(names) != 1 or len(shape) != 4:
        return InputSpec()
    dims = [d if isinstance(d, int) else None for d in shape]
    batch: tuple[int, int | None] = (1, None)
    if dims[0] is not None:
        batch = (dims[0], dims[0])
    else:
        try:
            bounds = program.range_constraints[shape[0].node.expr]
            low = max(1, int(bounds.lower))
            high = int(bounds.upper) if bounds.upper.is_finite else None
            batch = (low, high if high is None or high >= low else low)
        except Exception:
            pass
    return InputSpec(batch, (dims[1], dims[2], dims[3]))


def read_pt2(path: Path, *, trust_pickle: bool = False) -> tuple[ExportedModel, dict[str, str], int | None]:
    """The archive's module on the CPU, its shiftaudit metadata, and the class count its output shape fixes."""
    what = f"torch.export archive {path}"
    try:
        data = read_regular(path, MAX_ARCHIVE_BYTES)
    except Refused as exc:
        raise CheckpointError(f"{what} {exc}.") from None
    try:
        archive = ZipArchive(data)
    except ZipStructureError as exc:
        raise CheckpointError(
            f"{what} is damaged or ambiguous as a zip archive ({exc}), so torch could read other "
            "bytes than the check; re-export it."
        ) from None
    try:
        why = untrusted_content(archive)
    except ArchiveDamaged as exc:
        raise CheckpointError(f"{what} holds {exc}; it is damaged or hostile, so re-export it.") from None
    except (ZipStructureError, ValueError, KeyError, AttributeError, TypeError, RecursionError) as exc:
        raise CheckpointError(f"{what} is damaged ({first_line(exc)[:200].rstrip('.')}).") from None
    if why is not None and not trust_pickle:
        raise CheckpointError(f"{what} holds {why}; loading it can run code from the file. Pass --trust-pickle if you trust it.")
    extra: dict[str, Any] = {EXTRA_FILE: ""}
    try:
        with _quiet_torch_export():
            program = torch.export.load(io.BytesIO(data), extra_files=extra)
            module = program.module()
    except Exception as exc:
        raise CheckpointError(
            f"{what} cannot be loaded ({first_line(exc)[:200].rstrip('.')}); it is damaged or from an "
            "incompatible torch, so re-export it."
        ) from None
    raw = archive_metadata(extra, what)
    return ExportedModel(module, _input_spec(program), str(path)).to("cpu"), raw, _output_classes(program)


def _output_classes(program: Any) -> int | None:
    """The last axis of the program's one output when it is a fixed (batch, classes) tensor."""
    try:
        out = next(n for n in program.graph.nodes if n.op == "output").args[0]
        val = out[0].meta.get("val") if isinstance(out, (list, tuple)) and len(out) == 1 else None
        shape = tuple(val.shape) if val is not None else ()
        return int(shape[1]) if len(shape) == 2 and isinstance(shape[1], int) else None
    except Exception:  # a class count is a nicety
        return None


def save_pt2(model: nn.Module, dest: Path, *, channels: int, size: tuple[int, int], metadata: dict[str, str]) -> None:
    """Export ``model`` (eval mode, CPU) for (N, channels, H, W) inputs with any batch N up to :data:`MAX_BATCH` and
    write it to ``dest`` with our metadata inside; buffers (the blur filters) travel with the graph.

    The archive is built in memory, so its folder is torch's neutral ``archive`` rather than the name of the
    temporary file it is written to, and the graph's stack traces (absolute paths of this machine's source files)
    are left out."""
    dest.write_bytes(pt2_bytes(model, channels=channels, size=size, metadata=metadata))


def pt2_bytes(model: nn.Module, *, channels: int, size: tuple[int, int], metadata: dict[str, str]) -> bytes:
    """The ``.pt2`` archive :func:`save_pt2` writes, as bytes."""
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
    for node in program.graph.nodes:
        node.meta.pop("stack_trace", None)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(program, buffer, extra_files={EXTRA_FILE: json.dumps(metadata)})
    return buffer.getvalue()
