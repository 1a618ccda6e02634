"""Where an ONNX graph downsamples: its strided Conv, MaxPool and AveragePool nodes and its global pools.

The graph cannot be hooked like a PyTorch model, but it says what it does: each node's ``strides`` and kernel, and,
after ONNX shape inference on an input fixed to the audit size, each tensor's spatial size. The result is the
:class:`~shiftaudit.antialias.inspection.Inspection` that ``inspect`` shows for PyTorch models, without the patch
column: patching needs the PyTorch modules. Needs the ``onnx`` package (``pip install 'shiftaudit[onnx]'``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shiftaudit.antialias.inspection import DownsamplingPoint, Inspection
from shiftaudit.errors import CheckpointError, first_line
from shiftaudit.loading.onnx_model import INSTALL, GraphInput

SPATIAL = {"Conv": "conv", "MaxPool": "maxpool", "AveragePool": "avgpool", "LpPool": "pool"}
GLOBAL = {"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}


def _shape(value_info: Any) -> list[int | None]:
    dims = value_info.type.tensor_type.shape.dim
    return [int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]


def _ints(node: Any, name: str) -> list[int] | None:
    for attr in node.attribute:
        if attr.name == name:
            return [int(v) for v in attr.ints]
    return None


def _count(shapes: Any) -> int:
    total = 0
    for dims in shapes:
        n = 1
        for d in dims:
            n *= int(d)
        total += n
    return total


def parameter_count(path: Path) -> int:
    """Elements in the graph's initializers (its weights, as exported: BatchNorm often folded into the convs), read
    from the graph alone (external weight files are not opened); 0 without the onnx package."""
    try:
        import onnx

        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # a count for the report, never a reason to fail
        return 0
    return _count(list(t.dims) for t in graph.initializer)


def inspect_onnx(path: Path, graph_input: GraphInput, size: tuple[int, int], channels: int) -> Inspection:
    """Every downsampling node of the graph at ``size`` (H, W) inputs, in graph order."""
    model = _shaped_model(path, graph_input, size, channels)
    graph = model.graph
    shapes = {v.name: _shape(v) for v in [*graph.value_info, *graph.input, *graph.output]}
    weights = {t.name: list(t.dims) for t in graph.initializer}
    h, w = size
    points, smallest = _downsampling_points(graph.node, shapes, weights, (h, w))
    output = shapes.get(graph.output[0].name, []) if graph.output else []
    return Inspection(
        input_size=(h, w),
        points=points,
        total_stride=max(1, round(h / max(smallest[0], 1))),
        final_size=smallest,
        parameter_count=_count(weights.values()),
        output_shape=tuple(d if d is not None else -1 for d in output),
    )


def _shaped_model(path: Path, graph_input: GraphInput, size: tuple[int, int], channels: int) -> Any:
    """The ONNX model with its input fixed to one image of ``size`` and every shape inferred from there: the sizes of
    the maps, not the operators alone, say where the graph downsamples."""
    try:
        import onnx
    except ImportError:
        raise CheckpointError(f"Reading the layers of ONNX model {path} needs the onnx package: {INSTALL}.") from None
    try:
        model = onnx.load(str(path), load_external_data=False)
        fixed = (1, channels, *size) if graph_input.layout == "NCHW" else (1, *size, channels)
        inp = next(i for i in model.graph.input if i.name == graph_input.name)
        for dim, value in zip(inp.type.tensor_type.shape.dim, fixed):
            dim.dim_value = value
        model = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # a graph onnxruntime ran but onnx cannot infer: say so
        raise CheckpointError(f"Cannot read the layers of ONNX model {path} ({first_line(exc)[:200].rstrip('.')}).") from None
    return model


def _downsampling_points(
    nodes: Any, shapes: dict[str, list[int | None]], weights: dict[str, list[int]], size: tuple[int, int]
) -> tuple[list[DownsamplingPoint], tuple[int, int]]:
    """The strided spatial nodes and global pools with known 4-D shapes, each with its role, and the smallest map size
    met (the graph's final resolution)."""
    h, w = size
    points: list[DownsamplingPoint] = []
    smallest = (h, w)
    for i, node in enumerate(nodes):
        if node.op_type not in SPATIAL and node.op_type not in GLOBAL:
            continue
        ins, outs = shapes.get(node.input[0]), shapes.get(node.output[0])
        if not ins or not outs or len(ins) != 4 or len(outs) != 4 or None in (*ins[2:], *outs[2:]):
            continue
        in_size, out_size = (int(ins[2] or 0), int(ins[3] or 0)), (int(outs[2] or 0), int(outs[3] or 0))
        is_global = node.op_type in GLOBAL
        if not is_global and out_size[0] * out_size[1] < smallest[0] * smallest[1]:
            smallest = out_size
        stride = _ints(node, "strides")
        kernel = _ints(node, "kernel_shape")
        if kernel is None and node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in weights:
            kernel = weights[node.input[1]][2:]
        if not is_global and not (stride and max(stride) > 1):
            continue
        if in_size == (1, 1):
            continue
        if is_global:
            role = "global"
        elif in_size == (h, w):
            role = "stem"
        elif node.op_type == "Conv" and kernel == [1, 1]:
            role = "shortcut"
        else:
            role = "main"
        points.append(
            DownsamplingPoint(
                name=node.name or f"{node.op_type}_{i}",
                kind="global-pool" if is_global else SPATIAL[node.op_type],
                module=node.op_type,
                kernel=(kernel[0], kernel[1]) if kernel and len(kernel) == 2 else None,
                stride=(stride[0], stride[1]) if stride and len(stride) == 2 else None,
                in_size=in_size,
                out_size=out_size,
                channels=outs[1],
                cumulative_stride=max(1, round(h / max(out_size[0], 1))),
                role=role,
            )
        )
    return points, smallest
