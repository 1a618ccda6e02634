"""Per-layer shift-equivariance and invariance (§3.1 Eq. 1-2, §4.2.1, Fig. 4): where does robustness break?

For a layer l with feature map F_l (h x w, C channels) of an H x W input, nearest-upsampled to the input size (F~_l):

- equivariance distance at shift D: d(Shift_D F~_l(X), F~_l(Shift_D X))
- invariance distance at shift D:   d(F~_l(X), F~_l(Shift_D X))

with d the cosine distance across channels, averaged over the H x W locations and over images.

Nothing is ever upsampled. Cosine distance only needs channel-normalised vectors, and nearest upsampling repeats
each low-resolution vector on an s x s block (s = H / h). So for D = q*s + r (0 <= r < s) per axis, the
upsampled, shifted map agrees on (s - r)/s of each block with the low-resolution map rolled by q and on r/s with
it rolled by q + 1. The equivariance distance is therefore an exact weighted mix of four low-resolution
comparisons. For 1 x 1 layers (pooled features, logits, softmax) every roll is the identity and the two distances
coincide, as the paper notes. Non-integer strides fall back to explicit nearest upsampling.

Features come from forward hooks during the engine's own batched pass (an :class:`~shiftaudit.engine.observers.Observer`):
per device chunk, each hooked layer is reduced at once to one distance per (image, shift), so at no time are all
layers of all shifts held in memory. Only the zero-shift features of the images in the current batch are kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shiftaudit.antialias.inspection import inspect_model, is_spatial_op
from shiftaudit.errors import UsageError
from shiftaudit.metrics.entries import Distances, Layer, LayerDistances
from shiftaudit.module_inputs import input_tensor
from shiftaudit.shifts.modes.circular import ShiftBank
from shiftaudit.shifts.sets import ShiftSet

if TYPE_CHECKING:
    from torch.utils.hooks import RemovableHandle

EPS = 1e-12
SCALE_FRACTION = 0.5  # the colour scale's red: half the mean distance between two different images (Fig. 4)


def colour_scale(reference: float | None) -> float | None:
    """The distance drawn red in a layer's heatmap, and the unit of the table's relative column: half the layer's
    reference distance, as in the paper's Fig. 4. None when the reference is unknown (a single image)."""
    if reference is None or not math.isfinite(reference) or reference <= 0:
        return None
    return SCALE_FRACTION * reference


@dataclass(frozen=True)
class LayerSpec:
    """A feature map to measure: the ``where`` of module ``module`` ("output", "input" or "dense")."""

    name: str
    module: str  # dotted module name; "" for the network input, "<logits>"/"<softmax>" for the output
    where: str

    @property
    def is_model_output(self) -> bool:
        return self.module in ("<logits>", "<softmax>")


def _dense_pool_input(module: nn.Module) -> bool:
    """A strided max-pool: its dense (stride-1) version is worth showing separately, as in Fig. 4."""
    if not isinstance(module, nn.MaxPool2d):
        return False
    strides = (module.stride,) if isinstance(module.stride, int) else tuple(module.stride)
    return max(strides) > 1  # a (1, 2) stride subsamples too


def select_layers(model: nn.Module, spec: str | list[str], size: tuple[int, int], channels: int = 3) -> list[LayerSpec]:
    """Resolve ``auto``, ``all`` or a list of module names to the feature maps to measure.

    ``auto`` follows Fig. 4: the pixels; for every downsampling point the features entering it, its dense part
    (a strided max-pool evaluated at stride 1; the stride-1 pool of a patched MaxBlurPool) and its subsampled output;
    the globally pooled features; the logits and the softmax. ``all`` takes the output of every convolution and pool.
    """
    modules = dict(model.named_modules())
    if isinstance(spec, str) and spec not in ("auto", "all"):
        spec = [s.strip() for s in spec.split(",") if s.strip()]

    def label(name: str) -> str:
        """Sequential children are named by number: add the layer type so the name says something."""
        last = name.rsplit(".", 1)[-1]
        return f"{name} {type(modules[name]).__name__}" if last.isdigit() else name

    layers: list[LayerSpec] = [LayerSpec("pixels", "", "input")]
    if spec == "auto":
        insp = inspect_model(model, size, channels)
        first_conv = next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
        for p in insp.points:
            if p.role == "squeeze":
                continue
            module = modules[p.name]
            if p.role == "global":
                layers.append(LayerSpec(f"{label(p.name)} (pooled)", p.name, "output"))
                continue
            # the first conv's input is the pixels; a shortcut's input is the main path's: do not measure twice
            if p.role != "shortcut" and not (p.role == "stem" and p.name == first_conv):
                layers.append(LayerSpec(f"{label(p.name)} (in)", p.name, "input"))
            if _dense_pool_input(module):
                layers.append(LayerSpec(f"{label(p.name)} (dense)", p.name, "dense"))
            layers.append(LayerSpec(f"{label(p.name)} (ds)", p.name, "output"))
    elif spec == "all":
        for name, module in model.named_modules():
            if name and is_spatial_op(module) and not list(module.children()):
                layers.append(LayerSpec(label(name), name, "output"))
    else:
        unknown = [n for n in spec if n not in modules or n == ""]
        if unknown:
            import difflib

            close = difflib.get_close_matches(unknown[0], [n for n in modules if n], n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else "; `shiftaudit inspect` lists the layers."
            raise UsageError(f"The model has no layer named {unknown[0]!r}{hint}")
        layers += [LayerSpec(label(n), n, "output") for n in spec]
    layers += [LayerSpec("logits", "<logits>", "output"), LayerSpec("softmax", "<softmax>", "output")]
    return layers


def _normalise(f: torch.Tensor) -> torch.Tensor:
    """Unit vectors across channels, plus one indicator channel that is 1 where the vector is zero.

    With the indicator, a plain dot product is the cosine similarity between non-zero vectors, 1 between two
    zero vectors (identical features: distance 0) and 0 between a zero and a non-zero vector, with no masking.
    2-D outputs (pooled features, logits) become (N, C, 1, 1).
    """
    if f.ndim == 2:
        f = f[:, :, None, None]
    if f.ndim != 4:
        raise UsageError(f"A measured layer produced a {f.ndim}-D tensor; only (N, C, H, W) feature maps can be compared.")
    if f.dtype in (torch.float16, torch.bfloat16) or not f.is_floating_point():
        f = f.float()
    norm = f.norm(dim=1, keepdim=True)
    zero = norm <= EPS
    return torch.cat([f / norm.clamp_min(EPS), zero.to(f.dtype)], dim=1)


def _cos_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over locations of the cosine distance between (indicator-augmented) unit vectors: (N,)."""
    return (1.0 - torch.einsum("nchw,nchw->n", a, b) / (a.shape[-2] * a.shape[-1])).clamp_min(0.0)


class _LayerState:
    def __init__(self, num_shifts: int) -> None:
        self.sum_eq = np.zeros(num_shifts, dtype=np.float64)
        self.sum_inv = np.zeros(num_shifts, dtype=np.float64)
        self.count = np.zeros(num_shifts, dtype=np.int64)
        self.ref_sum = 0.0
        self.ref_count = 0
        self.size: tuple[int, int] | None = None
        self.channels: int | None = None
        self.pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.pending_ref: list[tuple[float, int]] = []


class FeatureDistance:
    """Engine observer measuring equivariance/invariance distances of chosen layers over the whole shift set."""

    name = "layers"
    entry_type = LayerDistances

    def __init__(self, layers: list[LayerSpec], shift_set: ShiftSet) -> None:
        if not layers:
            raise UsageError("No layers to measure.")
        self.layers = layers
        self.shift_set = shift_set
        self.H, self.W = shift_set.height, shift_set.width
        self.states = {spec.name: _LayerState(len(shift_set)) for spec in layers}
        self._hooks: list[RemovableHandle] = []
        self._zero: dict[str, torch.Tensor] = {}  # layer -> (B, C, h, w) normalised zero-shift features of this batch
        self._prev_zero: dict[str, torch.Tensor] = {}  # last image's zero-shift features: the reference pair
        self._flat_image: torch.Tensor | None = None
        self._flat_shift: torch.Tensor | None = None
        self._sl: slice | None = None
        self._dh = torch.as_tensor(shift_set.dh)
        self._dw = torch.as_tensor(shift_set.dw)

    # -- engine protocol ------------------------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> None:
        modules = dict(model.named_modules())
        by_module: dict[str, list[LayerSpec]] = {}
        for spec in self.layers:
            if spec.module and not spec.is_model_output:
                by_module.setdefault(spec.module, []).append(spec)
        for mod_name, specs in by_module.items():
            module = modules[mod_name]
            self._hooks.append(module.register_forward_hook(self._make_hook(specs), with_kwargs=True))

    def detach(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def begin_batch(self, flat_image: torch.Tensor, flat_shift: torch.Tensor, image_ids: np.ndarray) -> None:
        self._flat_image = flat_image
        self._flat_shift = flat_shift
        self._zero = {}
        self._dh = self._dh.to(flat_shift.device)
        self._dw = self._dw.to(flat_shift.device)

    def begin_chunk(self, sl: slice) -> None:
        self._sl = sl
        for st in self.states.values():
            st.pending.clear()
            st.pending_ref.clear()

    def on_inputs(self, x: torch.Tensor) -> None:
        for spec in self.layers:
            if spec.module == "":
                self._measure(spec, x)

    def on_logits(self, logits: torch.Tensor) -> None:
        for spec in self.layers:
            if spec.module == "<logits>":
                self._measure(spec, logits)
            elif spec.module == "<softmax>":
                self._measure(spec, torch.softmax(logits.float(), dim=1))

    def end_chunk(self) -> None:
        for st in self.states.values():
            for idx, eq, inv in st.pending:
                np.add.at(st.sum_eq, idx, eq)
                np.add.at(st.sum_inv, idx, inv)
                np.add.at(st.count, idx, 1)
            for total, n in st.pending_ref:
                st.ref_sum += total
                st.ref_count += n
            st.pending.clear()
            st.pending_ref.clear()

    def abort_chunk(self) -> None:
        for st in self.states.values():
            st.pending.clear()
            st.pending_ref.clear()

    # -- measurement ----------------------------------------------------------------------------------------------
    def _make_hook(self, specs: list[LayerSpec]) -> Callable[[nn.Module, tuple[object, ...], dict[str, object], object], None]:
        def hook(mod: nn.Module, args: tuple[object, ...], kwargs: dict[str, object], output: object) -> None:
            x_in = input_tensor(args, kwargs)
            for spec in specs:
                if spec.where == "input" and isinstance(x_in, torch.Tensor):
                    self._measure(spec, x_in)
                elif spec.where == "dense" and isinstance(x_in, torch.Tensor) and isinstance(mod, nn.MaxPool2d):
                    self._measure(spec, _dense_max_pool(mod, x_in))
                elif spec.where == "output":
                    out = (
                        output if isinstance(output, torch.Tensor) else (output[0] if isinstance(output, (tuple, list)) else None)
                    )
                    if isinstance(out, torch.Tensor):
                        self._measure(spec, out)

        return hook

    def _measure(self, spec: LayerSpec, features: torch.Tensor) -> None:
        assert self._sl is not None and self._flat_image is not None and self._flat_shift is not None
        st = self.states[spec.name]
        fn = _normalise(features.detach())
        st.size = (int(fn.shape[-2]), int(fn.shape[-1]))
        st.channels = int(fn.shape[1]) - 1
        img = self._flat_image[self._sl]
        shift = self._flat_shift[self._sl]
        # 1. remember the zero-shift features of each image (zero comes first in every image's slots)
        is_zero = shift == self.shift_set.zero_index
        if bool(is_zero.any()):
            zero_rows = torch.nonzero(is_zero).flatten()
            store = self._zero.get(spec.name)
            if store is None:
                b = int(self._flat_image.max()) + 1
                store = torch.zeros((b, *fn.shape[1:]), dtype=fn.dtype, device=fn.device)
                self._zero[spec.name] = store
            store[img[zero_rows]] = fn[zero_rows]
            # reference scale: each image against the previous image (different images, no shift)
            prev = self._prev_zero.get(spec.name)
            total, n = 0.0, 0
            for r in zero_rows.tolist():
                cur = fn[r : r + 1]
                if prev is not None and prev.shape == cur.shape:
                    total += float(_cos_distance(prev, cur).sum())
                    n += 1
                prev = cur
            if prev is not None:
                self._prev_zero[spec.name] = prev.clone()
            st.pending_ref.append((total, n))
        zero = self._zero[spec.name][img]  # (n, C, h, w)
        inv = _cos_distance(zero, fn)
        eq = self._equivariance(zero, fn, shift, st.size)
        st.pending.append((shift.cpu().numpy(), eq.cpu().double().numpy(), inv.cpu().double().numpy()))

    def _equivariance(
        self, zero: torch.Tensor, shifted: torch.Tensor, shift: torch.Tensor, size: tuple[int, int]
    ) -> torch.Tensor:
        h, w = size
        dh, dw = self._dh[shift], self._dw[shift]
        if self.H % h == 0 and self.W % w == 0:
            sh, sw = self.H // h, self.W // w
            qh, rh = torch.div(dh, sh, rounding_mode="floor"), torch.remainder(dh, sh)
            qw, rw = torch.div(dw, sw, rounding_mode="floor"), torch.remainder(dw, sw)
            bank = ShiftBank(zero)
            idx = torch.arange(zero.shape[0], device=zero.device)
            total = torch.zeros(zero.shape[0], device=zero.device, dtype=zero.dtype)
            for a, wa in ((0, (sh - rh) / sh), (1, rh / sh)):
                for b, wb in ((0, (sw - rw) / sw), (1, rw / sw)):
                    weight = (wa * wb).to(zero.dtype)
                    if not bool((weight > 0).any()):
                        continue
                    rolled = bank.gather(idx, qh + a, qw + b)
                    total = total + weight * _cos_distance(rolled, shifted)
            return total
        # non-integer stride: nearest-upsample explicitly, then roll at full resolution
        up_zero = F.interpolate(zero, size=(self.H, self.W), mode="nearest")
        up_shifted = F.interpolate(shifted, size=(self.H, self.W), mode="nearest")
        rolled = ShiftBank(up_zero).gather(torch.arange(zero.shape[0], device=zero.device), dh, dw)
        return _cos_distance(rolled, up_shifted)

    # -- results --------------------------------------------------------------------------------------------------
    def compute(self) -> LayerDistances:
        ss = self.shift_set
        hs, ws = np.unique(ss.dh), np.unique(ss.dw)
        hpos = {int(v): i for i, v in enumerate(hs)}
        wpos = {int(v): i for i, v in enumerate(ws)}
        out_layers = []
        for spec in self.layers:
            st = self.states[spec.name]
            if st.size is None:
                continue
            n = np.maximum(st.count, 1)
            eq = st.sum_eq / n
            inv = st.sum_inv / n
            ref = st.ref_sum / st.ref_count if st.ref_count else float("nan")

            def grid(values: np.ndarray) -> list[list[float | None]]:
                g: list[list[float | None]] = [[None] * len(ws) for _ in hs]
                for k in range(len(ss)):
                    g[hpos[int(ss.dh[k])]][wpos[int(ss.dw[k])]] = float(values[k])
                return g

            stride = max(1, round(self.H / st.size[0]))
            out_layers.append(
                Layer(
                    name=spec.name,
                    module=spec.module,
                    where=spec.where,
                    resolution=list(st.size),
                    channels=st.channels,
                    stride=stride,
                    reference_distance=ref,
                    equivariance=Distances(float(eq.mean()), float(eq.max()), grid(eq)),
                    invariance=Distances(float(inv.mean()), float(inv.max()), grid(inv)),
                    exact_modulo=exact_modulo(eq, ss, ref),
                )
            )
        return LayerDistances(dh=[int(v) for v in hs], dw=[int(v) for v in ws], layers=out_layers)


def exact_modulo(distance: np.ndarray, shift_set: ShiftSet, reference: float, tol: float = 1e-4) -> int | None:
    """The smallest N such that the distance is ~0 at every measured shift that is a multiple of N (None if none).

    N = 1 means exact shift-equivariance. The tolerance is relative to the layer's reference distance, so float
    rounding never hides or fakes a result.
    """
    scale = reference if math.isfinite(reference) and reference > 0 else 1.0
    limit = tol * scale
    n = 1
    size = max(shift_set.height, shift_set.width)
    while n <= size:
        mask = (np.mod(shift_set.dh, n) == 0) & (np.mod(shift_set.dw, n) == 0)
        if mask.sum() > 1 and float(np.max(distance[mask])) <= limit:
            return n
        n *= 2
    return None


def _dense_max_pool(module: nn.MaxPool2d, x: torch.Tensor) -> torch.Tensor:
    """The strided max-pool evaluated densely (stride 1), circularly padded so the map keeps the input's size."""
    k = module.kernel_size if isinstance(module.kernel_size, tuple) else (module.kernel_size, module.kernel_size)
    xp = F.pad(x, (0, k[1] - 1, 0, k[0] - 1), mode="circular")
    return F.max_pool2d(xp, k, stride=1)
