"""Shift-and-stitch: the outputs of every circular shift of an image from one polyphase evaluation.

For a network whose every op between downsamplings is circularly shift-equivariant (convs with circular padding,
pointwise ops, BN in eval) a stride-s op ``D`` satisfies, for a circular shift by ``d = s*q + r`` (0 <= r < s),

    D(roll(x, d)) = roll(D(roll(x, r)), q).

So instead of running the net once per shift, we feed ``D`` the s^2 *phases* ``roll(x, r)`` stacked in the batch and
carry on: the residual shift ``q`` of the subsampled map is handled by the next downsampling the same way. At the
head, a global pool (or a 1x1 map) makes the last residual irrelevant; a flatten of a larger map gets every residual
roll stacked as well. The batch then holds the output of every one of the H*W circular shifts, at the cost of one
dense evaluation per layer (the total spatial extent never shrinks), e.g. ~24x fewer FLOPs than 1024 passes for
VGG-13 at 32x32. Exactness rests on a whitelist checked on a ``torch.fx`` graph plus a numeric probe in the engine;
anything else falls back to the normal engine. See docs/performance.md for the bookkeeping.

Models patched by :mod:`shiftaudit.antialias` with circular blur padding are accepted too: a circular ``BlurPool2d``
of stride s is a circularly padded depthwise conv of stride s (a subsampling like any strided conv), and the blur
modules that wrap a dense op (``PoolBlur2d``, ``ConvThenBlur2d``, ``BlurThenConv2d``) are split in the traced graph
into their stride-1 part and their blur, so the phases are stacked right before the subsampling. ``APSDown2d``
chooses its phase from the data and is refused.
"""

from __future__ import annotations

import contextlib
import io
import operator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from shiftaudit.antialias.aps import APSDown2d
from shiftaudit.antialias.blurpool import BlurPool2d
from shiftaudit.antialias.modules import BlurThenConv2d, ConvThenBlur2d, PoolBlur2d
from shiftaudit.errors import first_line
from shiftaudit.sizes import pair

Signature = tuple[tuple[str, int, int], ...]  # per downsampling ("s", sh, sw); a final ("q", hf, wf) residual stack

_POINTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Softplus,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
    nn.BatchNorm2d,
    nn.GroupNorm,
    nn.InstanceNorm2d,
)
_VECTOR_MODULES: tuple[type[nn.Module], ...] = _POINTWISE_MODULES + (
    nn.Linear,
    nn.BatchNorm1d,
    nn.LayerNorm,
    nn.Flatten,
    nn.Softmax,
    nn.LogSoftmax,
    nn.Conv2d,
)
_POINTWISE_FUNCS = {
    F.relu,
    torch.relu,
    F.relu6,
    F.gelu,
    F.silu,
    F.mish,
    F.elu,
    F.leaky_relu,
    F.hardswish,
    F.hardsigmoid,
    F.hardtanh,
    F.dropout,
    torch.sigmoid,
    torch.tanh,
    F.sigmoid,
    F.tanh,
    torch.clamp,
    torch.neg,
    operator.neg,
}
_BINARY_FUNCS = {
    operator.add,
    operator.iadd,
    operator.mul,
    operator.imul,
    operator.sub,
    operator.truediv,
    torch.add,
    torch.mul,
    torch.sub,
    torch.div,
}
_POINTWISE_METHODS = {
    "relu",
    "relu_",
    "sigmoid",
    "sigmoid_",
    "tanh",
    "clamp",
    "clamp_",
    "contiguous",
    "clone",
    "float",
    "double",
    "half",
    "bfloat16",
    "add",
    "add_",
    "mul",
    "mul_",
    "sub",
    "div",
}


class PolyphaseUnsupported(Exception):
    """Why the polyphase engine does not apply to a model (the engine notes it and falls back)."""


def _phases(x: torch.Tensor, sh: int, sw: int) -> torch.Tensor:
    """Stack the ``sh*sw`` rolled copies: ``out[b*sh*sw + rh*sw + rw] = roll(x[b], (rh, rw))``."""
    copies = [torch.roll(x, (rh, rw), (-2, -1)) if rh or rw else x for rh in range(sh) for rw in range(sw)]
    return torch.stack(copies, 1).flatten(0, 1)


def _residuals(x: torch.Tensor) -> torch.Tensor:
    """Every residual roll of a final (hf, wf) map, for a head that is not shift-invariant (flatten + linear)."""
    return _phases(x, x.shape[-2], x.shape[-1])


class _CircularPool(nn.Module):
    """The dense half of a circular ``PoolBlur2d``: circular padding, then its stride-1 pool (the same ops, in order)."""

    def __init__(self, owner: PoolBlur2d) -> None:
        super().__init__()
        (kh, kw), (ph, pw), (dh, dw) = owner.kernel, owner.padding, owner.dilation
        self.pads = (pw, dw * (kw - 1) - pw, ph, dh * (kh - 1) - ph)
        self.pool = owner.pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(F.pad(x, self.pads, mode="circular"))


_LEAVES = (BlurPool2d, PoolBlur2d, ConvThenBlur2d, BlurThenConv2d, APSDown2d, _CircularPool)


class _Tracer(fx.Tracer):
    """torch.nn modules and the blur modules stay leaves, so the whitelist sees layers, not their internals."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _LEAVES) or super().is_leaf_module(m, qualname)


def _plain_conv(m: nn.Conv2d) -> nn.Conv2d:
    """An ``nn.Conv2d`` with ``m``'s geometry that shares its weight and bias (the conv half of a conv+blur module)."""
    conv = nn.Conv2d(
        m.in_channels,
        m.out_channels,
        pair(m.kernel_size),
        stride=pair(m.stride),
        padding=m.padding if isinstance(m.padding, str) else pair(m.padding),
        dilation=pair(m.dilation),
        groups=m.groups,
        bias=m.bias is not None,
        padding_mode=m.padding_mode,
        device="meta",
    )
    conv.weight = m.weight
    conv.bias = m.bias
    conv.train(m.training)
    return conv


def _has_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks)


def _split_blur_modules(gm: fx.GraphModule) -> None:
    """Replace each call of a conv/pool + blur module by a call of its stride-1 part and a call of its blur.

    ``ConvThenBlur2d`` -> conv (stride 1), blur; ``BlurThenConv2d`` -> blur, conv; a circular ``PoolBlur2d`` ->
    circular pad + stride-1 pool, blur. The parts run exactly the ops the module's forward runs, in the same order;
    the new submodules live on ``gm`` only (the model is not touched) and share the model's parameters. Modules
    with forward hooks, and non-circular ``PoolBlur2d``, stay whole (the analysis then refuses them).
    """
    modules = dict(gm.named_modules())
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        m = modules[str(node.target)]
        if not isinstance(m, (PoolBlur2d, ConvThenBlur2d, BlurThenConv2d)) or _has_hooks(m):
            continue
        if isinstance(m, PoolBlur2d):
            if not m.circular:
                continue
            dense: nn.Module = _CircularPool(m)
        else:
            dense = _plain_conv(m)
        name = f"_polyphase_dense_{count}"
        while name in modules:
            count += 1
            name = f"_polyphase_dense_{count}"
        count += 1
        gm.add_submodule(name, dense)
        modules[name] = dense
        blur_name = f"{node.target}.blur"
        with gm.graph.inserting_before(node):
            if isinstance(m, BlurThenConv2d):
                first = gm.graph.call_module(blur_name, node.args, dict(node.kwargs))
                last = gm.graph.call_module(name, (first,))
            else:
                first = gm.graph.call_module(name, node.args, dict(node.kwargs))
                last = gm.graph.call_module(blur_name, (first,))
        node.replace_all_uses_with(last)
        gm.graph.erase_node(node)
    if count:
        gm.graph.lint()
        gm.recompile()


class _ShapeProp(fx.Interpreter):
    """Runs the graph once and keeps each tensor node's output shape in ``node.meta["shape"]``: all the analysis
    needs of torch.fx's ``ShapeProp``, which imports sympy on its first node (0.7 s of every all-shift audit's plan)."""

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if isinstance(result, torch.Tensor):
            n.meta["shape"] = tuple(result.shape)
        return result


def _shape(node: object) -> tuple[int, ...] | None:
    return node.meta.get("shape") if isinstance(node, fx.Node) else None


@dataclass
class _State:
    kind: str  # "map": shift-equivariant feature map; "vec": per-sample and shift-invariant; "const"
    sig: Signature


class _Analyser:
    """Walks the traced graph: checks every op against the whitelist, tracks each value's phase layout."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.state: dict[fx.Node, _State] = {}
        self.expand: dict[fx.Node, tuple[str, tuple[int, int]]] = {}  # node -> insert phases/residuals before it

    def fail(self, node: fx.Node, why: str) -> PolyphaseUnsupported:
        return PolyphaseUnsupported(f"{getattr(node.target, '__name__', node.target)}: {why}")

    def tensors(self, node: fx.Node) -> list[_State]:
        out: list[_State] = []
        for a in node.all_input_nodes:
            st = self.state.get(a)
            if st is None:
                raise self.fail(node, "depends on a value the analysis could not follow")
            if st.kind != "const":
                out.append(st)
        return out

    def same(self, node: fx.Node) -> _State:
        """An op that keeps layout and kind: every tensor input must share one phase layout."""
        ins = self.tensors(node)
        if not ins:
            return _State("const", ())
        sigs = {s.sig for s in ins}
        if len(sigs) != 1:
            raise self.fail(node, "combines values with different downsampling histories")
        kind = "map" if any(s.kind == "map" for s in ins) else "vec"
        if kind == "map":
            for a in node.all_input_nodes:
                st, shp = self.state[a], _shape(a)
                if st.kind == "const" and shp is not None and len(shp) >= 2 and (shp[-1] != 1 or shp[-2] != 1):
                    raise self.fail(node, "mixes a feature map with a position-dependent constant")
        return _State(kind, sigs.pop())

    def check_size(self, node: fx.Node, stride: tuple[int, int]) -> None:
        src, dst = _shape(node.args[0]) if node.args else None, _shape(node)
        if src is None or dst is None or len(src) != 4 or len(dst) != 4:
            raise self.fail(node, "not a 4-D feature map")
        for n_in, n_out, s in ((src[2], dst[2], stride[0]), (src[3], dst[3], stride[1])):
            if n_in % s or n_out * s != n_in:
                raise self.fail(node, f"maps size {n_in} to {n_out} at stride {s}: not a circular, exact subsampling")

    def downsample(self, node: fx.Node, stride: tuple[int, int]) -> _State:
        ins = self.tensors(node)
        if len(ins) != 1 or ins[0].kind != "map":
            raise self.fail(node, "a spatial op on something other than a feature map")
        self.check_size(node, stride)
        if stride == (1, 1):
            return ins[0]
        self.expand[node] = ("phases", stride)
        return _State("map", ins[0].sig + (("s",) + stride,))

    def module(self, node: fx.Node, m: nn.Module) -> _State:
        ins = self.tensors(node)
        kind = ins[0].kind if ins else "const"
        if kind == "vec" and isinstance(m, _VECTOR_MODULES):
            return self.same(node)
        if isinstance(m, nn.Conv2d) and type(m) is nn.Conv2d:
            pads = m.padding if isinstance(m.padding, tuple) else (1, 1)
            if any(pads) and m.padding_mode != "circular":
                raise self.fail(node, f"pads with {m.padding_mode}, not circularly")
            return self.downsample(node, pair(m.stride))
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) and type(m) in (nn.MaxPool2d, nn.AvgPool2d):
            if any(pair(m.padding)) or (isinstance(m, nn.MaxPool2d) and pair(m.dilation) != (1, 1)):
                raise self.fail(node, "a padded or dilated pool is not circular")
            return self.downsample(node, pair(m.stride if m.stride is not None else m.kernel_size))
        if isinstance(m, BlurPool2d) and type(m) is BlurPool2d:
            # blur_pool2d: a depthwise conv on the padded input at stride s; with circular padding (any filter size,
            # even ones padding (k-1)//2 before and k//2 after) it is a circular conv of stride s, exact on H % s == 0
            if m.pad_mode != "circular" and tuple(m.kernel.shape[-2:]) != (1, 1):
                raise self.fail(node, f"BlurPool2d pads by {m.pad_mode}, not circularly (patch with pad='circular')")
            return self.downsample(node, pair(m.stride))
        if isinstance(m, _CircularPool):
            pool = m.pool
            if (
                type(pool) not in (nn.MaxPool2d, nn.AvgPool2d)
                or pair(pool.stride) != (1, 1)
                or any(pair(pool.padding))
                or pool.ceil_mode
                or getattr(pool, "return_indices", False)
            ):
                raise self.fail(node, "the dense pool of a PoolBlur2d is not a plain stride-1 pool")
            return self.downsample(node, (1, 1))  # circular padding + stride-1 pool: circularly equivariant
        if isinstance(m, APSDown2d):
            raise self.fail(
                node,
                "APSDown2d (adaptive polyphase sampling) picks its phase from the data, so its "
                "output cannot be decomposed into fixed phases",
            )
        if isinstance(m, PoolBlur2d):
            why = (
                "has forward hooks"
                if _has_hooks(m)
                else "pools without wrapping around the border (patch with pad='circular' or circular_conv=True)"
            )
            raise self.fail(node, f"PoolBlur2d {why}")
        if isinstance(m, (ConvThenBlur2d, BlurThenConv2d)):
            raise self.fail(node, f"{type(m).__name__} has forward hooks")
        if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            if pair(m.output_size if m.output_size is not None else 1) != (1, 1):
                raise self.fail(node, "an adaptive pool to more than 1x1 is not shift-invariant")
            return _State("vec", ins[0].sig) if ins else _State("const", ())
        if isinstance(m, nn.Flatten):
            if m.start_dim != 1:
                raise self.fail(node, "flattens the batch dimension")
            return self.flatten(node)
        if type(m) in _POINTWISE_MODULES:
            return self.same(node)
        raise self.fail(node, f"{type(m).__name__} is not known to be circularly shift-equivariant")

    def flatten(self, node: fx.Node) -> _State:
        ins = self.tensors(node)
        if len(ins) != 1:
            raise self.fail(node, "unexpected flatten")
        if ins[0].kind == "vec":
            return ins[0]
        shp = _shape(node.args[0])
        if shp is None or len(shp) != 4:
            raise self.fail(node, "flattens something other than a 4-D map")
        if shp[2] == shp[3] == 1:
            return _State("vec", ins[0].sig)
        self.expand[node] = ("residuals", (shp[2], shp[3]))
        return _State("vec", ins[0].sig + (("q", shp[2], shp[3]),))

    def function(self, node: fx.Node) -> _State:
        t = node.target
        if t in _POINTWISE_FUNCS or t in _BINARY_FUNCS:
            return self.same(node)
        if t is torch.cat:
            dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
            shp = _shape(node)
            if shp is None or dim not in (1, 1 - len(shp)):
                raise self.fail(node, "concatenates along a dimension other than channels")
            return self.same(node)
        if t is torch.flatten:
            start = node.kwargs.get("start_dim", node.args[1] if len(node.args) > 1 else 0)
            if start != 1 or node.kwargs.get("end_dim", node.args[2] if len(node.args) > 2 else -1) != -1:
                raise self.fail(node, "flattens other than from dim 1")
            return self.flatten(node)
        if t in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
            size = node.kwargs.get("output_size", node.args[1] if len(node.args) > 1 else None)
            if size is None or pair(size) != (1, 1):
                raise self.fail(node, "an adaptive pool to more than 1x1 is not shift-invariant")
            return self.global_pool(node)
        if t is torch.mean or t is torch.amax:
            return self.reduce(node, node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None))
        raise self.fail(node, "is not known to be circularly shift-equivariant")

    def global_pool(self, node: fx.Node) -> _State:
        ins = self.tensors(node)
        if len(ins) != 1:
            raise self.fail(node, "unexpected pooling")
        return _State("vec", ins[0].sig)

    def reduce(self, node: fx.Node, dim: Any) -> _State:
        ins = self.tensors(node)
        if len(ins) != 1:
            raise self.fail(node, "unexpected reduction")
        if ins[0].kind == "vec":
            return ins[0]
        dims = {int(d) % 4 for d in (dim if isinstance(dim, (tuple, list)) else [dim])} if dim is not None else set()
        if dims != {2, 3}:
            raise self.fail(node, "reduces other than over both spatial axes")
        return _State("vec", ins[0].sig)

    def method(self, node: fx.Node) -> _State:
        name = node.target
        if name in _POINTWISE_METHODS:
            return self.same(node)
        if name == "flatten":
            start = node.kwargs.get("start_dim", node.args[1] if len(node.args) > 1 else 0)
            if start != 1:
                raise self.fail(node, "flattens other than from dim 1")
            return self.flatten(node)
        if name in ("mean", "amax"):
            return self.reduce(node, node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None))
        raise self.fail(node, f"the tensor method {name} is not on the whitelist")

    def run(self) -> Signature:
        out_sig: Signature | None = None
        if sum(n.op == "placeholder" for n in self.gm.graph.nodes) != 1:
            raise PolyphaseUnsupported("the model's forward takes more than one argument")
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                self.state[node] = _State("map", ())
            elif node.op == "get_attr":
                self.state[node] = _State("const", ())
            elif node.op == "call_module":
                self.state[node] = self.module(node, self.modules[str(node.target)])
            elif node.op == "call_function":
                self.state[node] = self.function(node)
            elif node.op == "call_method":
                self.state[node] = self.method(node)
            elif node.op == "output":
                arg = node.args[0]
                if not isinstance(arg, fx.Node):
                    raise self.fail(node, "the model does not return a single tensor")
                st, shp = self.state[arg], _shape(arg)
                if st.kind == "map" and (shp is None or len(shp) != 4 or shp[2:] != (1, 1)):
                    raise self.fail(node, "the model returns a spatial map, not class scores")
                out_sig = st.sig
        if out_sig is None:
            raise PolyphaseUnsupported("the graph has no output")
        return out_sig


def _rewrite(gm: fx.GraphModule, expand: dict[fx.Node, tuple[str, tuple[int, int]]]) -> fx.GraphModule:
    """Insert the phase (or residual) stacking right before each downsampling (or flatten of a map)."""
    graph = gm.graph
    for node, (what, stride) in expand.items():
        src = node.args[0]
        assert isinstance(src, fx.Node)  # only ops on a traced feature map are expanded
        with graph.inserting_before(node):
            new = graph.call_function(_phases, (src, *stride)) if what == "phases" else graph.call_function(_residuals, (src,))
        node.replace_input_with(src, new)
    for node in graph.nodes:  # the stacked inputs change the shapes: drop the dense ones rather than keep them wrong
        node.meta.pop("shape", None)
    graph.lint()
    gm.recompile()
    return gm


def shift_order(sig: Signature, size: tuple[int, int], dh: np.ndarray, dw: np.ndarray) -> np.ndarray:
    """For every shift (dh, dw), its row in the polyphase output of one image.

    The shift's offsets are written in the mixed radix of the strides met along the way: at each downsampling
    ``d = s*q + r`` gives the phase digit ``r`` and the residual ``q`` carried on; a final ``("q", hf, wf)`` entry
    indexes the residual roll; without one the head is shift-invariant and the residual does not matter.
    """
    h, w = size
    qh = np.mod(np.asarray(dh, dtype=np.int64), h)
    qw = np.mod(np.asarray(dw, dtype=np.int64), w)
    index = np.zeros_like(qh)
    for entry in sig:
        if entry[0] == "s":
            sh, sw = entry[1], entry[2]
            index = index * (sh * sw) + (qh % sh) * sw + (qw % sw)
            qh, qw = qh // sh, qw // sw
        else:
            hf, wf = entry[1], entry[2]
            index = index * (hf * wf) + (qh % hf) * wf + (qw % wf)
    return index


def phase_count(sig: Signature) -> int:
    n = 1
    for entry in sig:
        n *= entry[1] * entry[2]
    return n


class PolyphaseModel(nn.Module):
    """``forward(x)`` of ``b`` images gives ``(b * len(shifts), classes)`` logits: image-major, in shift-set order."""

    order: torch.Tensor  # a buffer: each shift's row of the polyphase output

    def __init__(
        self, graph_module: fx.GraphModule, sig: Signature, size: tuple[int, int], dh: np.ndarray, dw: np.ndarray
    ) -> None:
        super().__init__()
        self.inner = graph_module
        self.signature = sig
        self.phases = phase_count(sig)
        self.cost = 1  # dense inputs one polyphase input weighs in memory: sets how many images go in one chunk
        self.register_buffer("order", torch.as_tensor(shift_order(sig, size, dh, dw)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        if isinstance(out, torch.Tensor) and out.ndim == 4:
            out = out.flatten(1)
        b = x.shape[0]
        return out.reshape(b, self.phases, -1)[:, self.order].reshape(b * self.order.numel(), -1)


def build_polyphase(model: nn.Module, sample: torch.Tensor, dh: np.ndarray, dw: np.ndarray) -> PolyphaseModel:
    """The polyphase form of ``model`` for inputs shaped like ``sample`` (1, C, H, W); raises PolyphaseUnsupported."""
    if not isinstance(model, nn.Module) or isinstance(model, torch.jit.ScriptModule):
        raise PolyphaseUnsupported("only a traceable nn.Module can be evaluated in polyphase form")
    if getattr(model, "black_box", None):  # an ONNX graph: its forward leaves torch
        raise PolyphaseUnsupported(f"the model is {model.black_box}")
    if model.training:
        raise PolyphaseUnsupported("the model is in training mode")
    try:
        tracer = _Tracer()
        graph = tracer.trace(model)
        gm = fx.GraphModule(tracer.root, graph)
    except Exception as exc:  # any tracing failure means: not applicable
        first = first_line(exc)
        raise PolyphaseUnsupported(f"torch.fx cannot trace the model ({first})") from None
    _split_blur_modules(gm)
    try:
        with torch.inference_mode(), contextlib.redirect_stderr(io.StringIO()):  # a failure only means "not applicable"
            _ShapeProp(gm).run(sample)
    except Exception as exc:
        raise PolyphaseUnsupported(f"the traced model does not run ({type(exc).__name__})") from None
    analyser = _Analyser(gm)
    sig = analyser.run()
    cost = _memory_factor(analyser)
    gm = _rewrite(gm, analyser.expand)
    poly = PolyphaseModel(gm, sig, (sample.shape[-2], sample.shape[-1]), dh, dw)
    poly.cost = cost
    return poly


def _memory_factor(analyser: _Analyser) -> int:
    """How many dense inputs one polyphase input weighs in activation memory (largest tensor against largest)."""
    dense, poly = 1, 1
    for node, st in analyser.state.items():
        shp = _shape(node)
        if shp is None or st.kind == "const":
            continue
        n = int(np.prod(shp))
        dense, poly = max(dense, n), max(poly, n * phase_count(st.sig))
    return max(1, -(-poly // dense))


def probe(model: nn.Module, poly: PolyphaseModel, image: torch.Tensor, dh: np.ndarray, dw: np.ndarray, count: int = 4) -> float:
    """Largest relative logit difference between the polyphase rows and direct forwards of a few rolled copies."""
    k = len(dh)
    picks = sorted({0, k - 1, k // 2, max(0, k // 3)} | set(range(min(k, count))))
    with torch.inference_mode():
        rows = poly(image[:1]).float()
        worst = 0.0
        for i in picks:
            direct = model(torch.roll(image[:1], (int(dh[i]), int(dw[i])), (-2, -1)))
            direct = direct.flatten(1).float() if isinstance(direct, torch.Tensor) else direct
            if not isinstance(direct, torch.Tensor):
                return float("inf")
            scale = 1.0 + float(direct.abs().max())
            worst = max(worst, float((rows[i] - direct[0]).abs().max()) / scale)
    return worst
