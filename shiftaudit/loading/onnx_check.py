"""What an ONNX file declares about sizes, checked against what it holds before onnxruntime spends memory on it.

A graph of a few hundred bytes can declare an initializer of [65536, 65536] floats with four bytes of data, a sparse
tensor onnxruntime densifies to 16 GiB, external weights in ``/dev/zero`` or ``../../secret``, or a ConstantOfShape,
Expand or Tile of constants that onnxruntime's constant folding would build at session creation (and, folding
disabled, at every forward). Session creation also holds the GIL for as long as it takes (about 0.1 ms a node), so
Ctrl-C waits for it. :func:`check_onnx_file` reads the protobuf with the ``onnx`` package (external data is never
loaded) and refuses each of these in one sentence naming the file; :func:`read_onnx` then creates the session with
constant folding disabled, which costs an exported network nothing (its exporter folded them already).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shiftaudit.errors import CheckpointError
from shiftaudit.files import Refused, open_regular
from shiftaudit.limits import MAX_ONNX_CONSTANT_BYTES, MAX_ONNX_NODES, gib

INSTALL = "pip install 'shiftaudit[onnx]'"  # what the onnx extra needs (onnx_model and onnx_inspect say it too)

# bytes per entry of each typed field of a TensorProto, when raw_data is not used
_FIELD_BYTES = {"float_data": 4, "int32_data": 4, "int64_data": 8, "double_data": 8, "uint64_data": 8}
NO_FOLDING = ["ConstantFolding"]  # what read_onnx disables at session creation (what builds constants)


def _itemsize(data_type: int) -> float:
    """Bytes per element of an ONNX tensor type (0.5 for 4-bit types; 0 for strings, whose size is their data)."""
    from onnx import TensorProto, helper

    if data_type in (TensorProto.STRING, TensorProto.UNDEFINED):
        return 0.0
    name = TensorProto.DataType.Name(data_type)
    if name.startswith(("INT4", "UINT4", "FLOAT4")):
        return 0.5
    try:
        return float(helper.tensor_dtype_to_np_dtype(data_type).itemsize)
    except Exception:  # a type this onnx does not map: assume the widest
        return 16.0


def _elements(dims: Any) -> int:
    return math.prod(int(d) for d in dims)


def _graphs(graph: Any) -> Iterator[Any]:
    """The graph and every subgraph inside it (If branches, Loop and Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)


def _node_lists(model: Any) -> Iterator[Any]:
    for graph in _graphs(model.graph):
        yield graph.node
    for function in model.functions:
        yield function.node


def _tensors(model: Any) -> Iterator[tuple[str, Any, bool]]:
    """(what, TensorProto, sparse) for every tensor the file holds: initializers and node attributes, everywhere."""
    for graph in _graphs(model.graph):
        for t in graph.initializer:
            yield f"initializer {t.name!r}", t, False
        for s in graph.sparse_initializer:
            yield f"sparse initializer {s.values.name!r}", s, True
    for nodes in _node_lists(model):
        for node in nodes:
            for attr in node.attribute:
                what = f"attribute {attr.name!r} of node {node.name or node.op_type!r}"
                if attr.HasField("t"):
                    yield what, attr.t, False
                for t in attr.tensors:
                    yield what, t, False
                if attr.HasField("sparse_tensor"):
                    yield what, attr.sparse_tensor, True
                for s in attr.sparse_tensors:
                    yield what, s, True


def _held_bytes(t: Any) -> int:
    if t.HasField("raw_data"):
        return len(t.raw_data)
    return sum(len(getattr(t, name)) * size for name, size in _FIELD_BYTES.items())


def _external(t: Any, what: str, folder: Path, source: str) -> None:
    """External data must be a regular file inside the model's folder, holding the bytes the tensor declares."""
    info = {e.key: e.value for e in t.external_data}
    location = info.get("location", "")
    outside = f"ONNX model {source} refers to external data {location!r} for its {what}"
    if not location or os.path.isabs(location) or ".." in Path(location).parts:
        raise CheckpointError(f"{outside}, which is not a file inside the model's folder; it is damaged or crafted.")
    real = os.path.realpath(folder / location)
    if os.path.commonpath([real, os.path.realpath(folder)]) != os.path.realpath(folder):
        raise CheckpointError(f"{outside}, a link to {real} outside the model's folder; it is damaged or crafted.")
    try:
        with open_regular(real) as (_, size):
            pass
    except Refused as exc:
        raise CheckpointError(f"{outside}, which {exc}; it is damaged or crafted.") from None
    try:
        offset, length = int(info.get("offset", 0)), int(info.get("length", size - int(info.get("offset", 0))))
    except ValueError:
        raise CheckpointError(f"{outside} with an offset or length that is not a number; it is damaged.") from None
    declared = math.ceil(_elements(t.dims) * _itemsize(t.data_type))
    if offset < 0 or length < 0 or offset + length > size or declared > length:
        raise CheckpointError(
            f"ONNX model {source} is damaged: its {what} declares {declared:,} bytes of external data at offset "
            f"{offset:,} of {location}, which holds {size:,} bytes."
        )


def _largest_weight(model: Any, folder: Path, source: str) -> int:
    """Check every stored tensor's declared size against its data; the largest one's size in bytes."""
    from onnx import TensorProto

    largest = 0
    for what, t, sparse in _tensors(model):
        if sparse:
            for part in (t.values, t.indices):
                largest = max(largest, _checked(part, what, folder, source))
            dense = _elements(t.dims) * _itemsize(t.values.data_type)
            if dense > MAX_ONNX_CONSTANT_BYTES and dense > 4 * largest:
                raise CheckpointError(
                    f"ONNX model {source} is too large: its {what} is a sparse tensor of shape {list(t.dims)} that "
                    f"onnxruntime would expand to {gib(dense)}."
                )
        elif t.data_type != TensorProto.STRING:
            largest = max(largest, _checked(t, what, folder, source))
    return largest


def _checked(t: Any, what: str, folder: Path, source: str) -> int:
    from onnx import TensorProto

    if any(int(d) < 0 for d in t.dims):
        raise CheckpointError(f"ONNX model {source} is damaged: its {what} has negative dimensions {list(t.dims)}.")
    if t.data_location == TensorProto.EXTERNAL:
        _external(t, what, folder, source)
        return math.ceil(_elements(t.dims) * _itemsize(t.data_type))
    declared = math.ceil(_elements(t.dims) * _itemsize(t.data_type))
    held = _held_bytes(t)
    if declared > held:
        raise CheckpointError(
            f"ONNX model {source} is damaged: its {what} declares {declared:,} bytes (shape {list(t.dims)}) but holds {held:,}."
        )
    return declared


def _constant_outputs(graph: Any, outer: set[str]) -> Iterator[tuple[Any, str]]:
    """(node, output name) for every output computed from constants alone: what constant folding would build."""
    constant = set(outer) | {t.name for t in graph.initializer} | {s.values.name for s in graph.sparse_initializer}
    constant.discard("")
    for node in graph.node:
        subgraphs = [a.g for a in node.attribute if a.HasField("g")] + [g for a in node.attribute for g in a.graphs]
        for sub in subgraphs:  # a branch or loop body sees the constants around it
            yield from _constant_outputs(sub, constant)
        if subgraphs:
            continue
        if all(name == "" or name in constant for name in node.input):
            for out in node.output:
                if out:
                    constant.add(out)
                    yield node, out


def _value_types(graph: Any) -> Iterator[Any]:
    for g in _graphs(graph):
        yield from g.value_info
        yield from g.output


def _check_constants(model: Any, largest: int, source: str) -> None:
    """No tensor built from constants alone (shapes known from onnx's shape inference) may exceed the limit."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # a graph onnx cannot infer: onnxruntime judges it, without folding
        return
    types = {v.name: v.type.tensor_type for v in _value_types(inferred.graph) if v.type.HasField("tensor_type")}
    limit = max(MAX_ONNX_CONSTANT_BYTES, 4 * largest)
    for node, out in _constant_outputs(inferred.graph, set()):
        tt = types.get(out)
        if tt is None or not tt.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if None in dims:
            continue
        size = _elements(dims) * _itemsize(tt.elem_type)
        if size > limit:
            raise CheckpointError(
                f"ONNX model {source} is too large: its {node.op_type} node {node.name or out!r} builds a tensor of "
                f"shape {dims} ({gib(size)}) from constants, more than the {gib(limit)} allowed."
            )


def check_onnx_file(path: Path) -> bool:
    """Refuse, in one sentence naming the file, an ONNX model whose declared sizes its data does not back or that
    would build huge tensors from constants; False when the ``onnx`` package cannot parse it (onnxruntime then
    decides, and :func:`~shiftaudit.loading.onnx_model.read_onnx` refuses a graph it loads unchecked)."""
    try:
        import onnx
    except ImportError:
        raise CheckpointError(f"Checking ONNX model {path} before loading it needs the onnx package: {INSTALL}.") from None
    source = str(path)
    try:
        model = onnx.load(source, load_external_data=False)
    except Exception:  # protobuf's DecodeError and friends: not parsed, so not checked
        return False
    nodes = sum(len(nodes) for nodes in _node_lists(model))
    if nodes > MAX_ONNX_NODES:
        raise CheckpointError(
            f"ONNX model {source} is too large: it has {nodes:,} nodes, more than the {MAX_ONNX_NODES:,} allowed for an "
            "image classifier."
        )
    largest = _largest_weight(model, Path(os.path.abspath(source)).parent, source)  # where onnxruntime looks
    _check_constants(model, largest, source)
    return True
