"""Where does a network downsample? Every strided conv/pool and every global pooling, with resolutions.

A forward pass on one blank image of the audit size, with a hook on every leaf module, records the spatial size
going into and coming out of each layer. A layer *downsamples* when its output is smaller than its input; adaptive
or global pooling to 1x1 is listed separately (it is where the network becomes invariant by averaging, and patching
leaves it alone). These are the points the paper identifies as the cause of aliasing.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from shiftaudit.engine.forward import model_exits_fail
from shiftaudit.errors import ModelError, UsageError, first_line
from shiftaudit.module_inputs import input_tensor
from shiftaudit.sizes import pair

POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.LPPool2d)
GLOBAL_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


@dataclass
class DownsamplingPoint:
    name: str
    kind: str  # "conv", "maxpool", "avgpool", "pool", "blurpool", "global-pool", "other"
    module: str  # class name
    kernel: tuple[int, int] | None
    stride: tuple[int, int] | None
    in_size: tuple[int, int]
    out_size: tuple[int, int]
    channels: int | None
    cumulative_stride: int  # input size / this layer's output size (height)
    role: str  # "stem", "shortcut", "main", "global", "squeeze" (squeeze-excitation pooling inside a block)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Inspection:
    input_size: tuple[int, int]
    points: list[DownsamplingPoint]
    total_stride: int
    final_size: tuple[int, int]
    parameter_count: int
    output_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        # ``total_stride`` arrives as input / final size rounded. At a size the strides do not divide, each layer
        # rounds its output size (up for padded convs and pools: 260 -> 130 -> 65 -> 33 -> 17 -> 9), so 260 / 9 gave
        # 29 and "downsampling where no layer shows it". The listed strides are the total stride whenever they give the
        # final size with some rounding.
        if self.explains_final_size(self.main_path_stride):
            self.total_stride = self.main_path_stride

    def explains_final_size(self, stride: int) -> bool:
        """Whether a total ``stride`` gives the final size from the input size, each side rounded down or up."""
        return all(math.floor(n / stride) <= f <= math.ceil(n / stride) for n, f in zip(self.input_size, self.final_size))

    @property
    def rounded(self) -> bool:
        """Whether the input size is not a multiple of the total stride, so the layers rounded their output sizes."""
        return any(n % self.total_stride for n in self.input_size)

    @property
    def downsampling(self) -> list[DownsamplingPoint]:
        return [p for p in self.points if p.role not in ("global", "squeeze")]

    @property
    def main_path_stride(self) -> int:
        """Product of the strides of the listed points on the main path (shortcuts run in parallel to it): equals
        :attr:`total_stride` when every downsampling point of the network is listed."""
        total = 1
        for p in self.downsampling:
            if p.role != "shortcut":
                total *= p.stride[0] if p.stride else max(1, round(p.in_size[0] / max(p.out_size[0], 1)))
        return total

    def to_json(self) -> dict[str, Any]:
        return {
            "input_size": list(self.input_size),
            "total_stride": self.total_stride,
            "main_path_stride": self.main_path_stride,
            "final_size": list(self.final_size),
            "parameter_count": self.parameter_count,
            "output_shape": list(self.output_shape),
            "points": [p.to_json() for p in self.points],
        }


def _opt_pair(v: Any) -> tuple[int, int] | None:
    return None if v is None else pair(v)


def blur_filter(module: nn.Module) -> torch.Tensor | None:
    """The fixed depthwise filter of a BlurPool-style downsampler, or None.

    BlurPool-style: a strided (stride >= 2) depthwise convolution whose filter is not learnt: a buffer of shape
    (C, 1, k, k) or (1, 1, k, k) (shiftaudit's ``BlurPool2d.kernel``, antialiased-cnns' ``BlurPool.filt``), or a depthwise
    ``Conv2d`` whose weight is frozen. Whatever the class is called, it is a downsampling point.
    """
    stride = getattr(module, "stride", None)
    try:
        s = pair(stride) if stride is not None else None
    except Exception:
        s = None
    if s is None or max(s) < 2:
        return None
    if isinstance(module, nn.Conv2d):
        if module.groups > 1 and module.groups == module.in_channels and not module.weight.requires_grad:
            return module.weight
        return None
    for buf in module.buffers(recurse=False):
        if buf.ndim == 4 and buf.shape[1] == 1 and buf.shape[-1] > 1 and buf.is_floating_point():
            return buf
    return None


def _kind(module: nn.Module) -> str:
    if blur_filter(module) is not None:
        return "blurpool"
    if isinstance(module, nn.Conv2d):
        return "conv"
    if isinstance(module, nn.MaxPool2d):
        return "maxpool"
    if isinstance(module, nn.AvgPool2d):
        return "avgpool"
    if isinstance(module, POOLS):
        return "pool"
    if isinstance(module, GLOBAL_POOLS):
        return "global-pool"
    return "other"


def is_spatial_op(module: nn.Module) -> bool:
    """Convolutions and pools: the only layers whose 4-D inputs we may read as (N, C, H, W).

    Other layers can see 4-D tensors in another layout (ConvNeXt runs Linear layers on N, H, W, C tensors), so
    their shapes say nothing about resolution.
    """
    if isinstance(module, (nn.Conv2d, *POOLS, *GLOBAL_POOLS, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)):
        return True
    name = type(module).__name__
    return ("Pool" in name or "Conv" in name) and "1d" not in name and "3d" not in name


def _filter_size(module: nn.Module) -> tuple[int, int] | None:
    filt = blur_filter(module)
    return None if filt is None else (int(filt.shape[-2]), int(filt.shape[-1]))


def _is_1x1_conv(module: nn.Module | None) -> bool:
    return isinstance(module, nn.Conv2d) and _opt_pair(module.kernel_size) == (1, 1)


def _on_shortcut(name: str, modules: dict[str, nn.Module]) -> bool:
    """A blur feeding a 1x1 conv: inside it (shiftaudit's BlurThenConv2d) or just before it in a Sequential
    (antialiased-cnns' ``downsample = Sequential(BlurPool, conv1x1, BN)``)."""
    parent, _, last = name.rpartition(".")
    if parent and _is_1x1_conv(modules.get(parent)):
        return True
    if last.isdigit():
        sibling = f"{parent}.{int(last) + 1}" if parent else str(int(last) + 1)
        return _is_1x1_conv(modules.get(sibling))
    return False


def _first_input_channels(model: nn.Module, default: int) -> int:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    return default


def too_small_error(model: object, size: tuple[int, int], channels: int) -> UsageError | None:
    """A model that fails on small ``size`` inputs but runs on larger ones was given inputs below its total stride:
    say so with the stride, instead of the framework's error from deep inside the network (or None: not that)."""
    h, w = int(size[0]), int(size[1])
    if min(h, w) >= 64 or not isinstance(model, nn.Module) or isinstance(model, torch.jit.ScriptModule):
        return None
    side = min(512, max(64, 4 * max(h, w)))
    try:
        stride = inspect_model(model, (side, side), channels).total_stride
    except Exception:  # it fails at a larger size too: the model's problem, not the size
        return None
    return UsageError(f"The model cannot run on {h}x{w} inputs (its total stride is {stride}); use --size {stride} or more.")


def input_too_small(model: Any, size: tuple[int, int], channels: int) -> UsageError | None:
    """The too-small-input error when the model fails on one ``size`` input and runs on larger ones, else None."""
    try:
        inspect_model(model, size, channels)
    except UsageError as exc:
        return exc
    except Exception:  # any other failure is the model's, reported as it was
        return None
    return None


_Record = tuple[str, nn.Module, tuple[int, int], tuple[int, int], int | None]  # name, module, in and out (H, W), channels


def inspect_model(model: nn.Module, size: tuple[int, int] = (224, 224), channels: int | None = None) -> Inspection:
    """Find every downsampling point of ``model`` for inputs of ``size`` (one forward pass on a blank image)."""
    if isinstance(model, torch.jit.ScriptModule):
        raise ModelError(
            "Layer-by-layer inspection needs a Python nn.Module; a TorchScript archive can be audited but not inspected."
        )
    h, w = size
    c = channels or _first_input_channels(model, 3)
    modules = dict(model.named_modules())
    records, out = _record_spatial_ops(model, modules, c, (h, w))

    # A patched conv (a conv owning its blur) downsamples through that blur: list the blur, the point where it happens.
    blur_names = [r[0] for r in records if _kind(r[1]) == "blurpool"]
    records = [r for r in records if not any(b.startswith(r[0] + ".") for b in blur_names)]
    points, smallest = _downsampling_points(records, modules, (h, w))
    out_t = out if isinstance(out, torch.Tensor) else (out[0] if isinstance(out, (tuple, list)) else None)
    return Inspection(
        input_size=(h, w),
        points=points,
        total_stride=max(1, round(h / max(smallest[0], 1))),
        final_size=smallest,
        parameter_count=sum(p.numel() for p in model.parameters()),
        output_shape=tuple(out_t.shape) if isinstance(out_t, torch.Tensor) else (),
    )


def _record_spatial_ops(
    model: nn.Module, modules: dict[str, nn.Module], c: int, size: tuple[int, int]
) -> tuple[list[_Record], Any]:
    """Run ``model`` once on a blank ``c x H x W`` image, recording the input and output size of every spatial op and
    blur: the sizes, not the module types, say where the model downsamples. Returns the records and the output."""
    h, w = size
    records: list[_Record] = []
    hooks = []

    def hook(name: str):
        def fn(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            x = input_tensor(args, kwargs)
            if not isinstance(x, torch.Tensor) or not isinstance(output, torch.Tensor):
                return
            if x.ndim != 4 or output.ndim != 4:
                return
            records.append((name, module, (x.shape[-2], x.shape[-1]), (output.shape[-2], output.shape[-1]), output.shape[1]))

        return fn

    for name, module in modules.items():
        blur = blur_filter(module) is not None
        if name and (blur or (is_spatial_op(module) and (not list(module.children()) or isinstance(module, nn.Conv2d)))):
            hooks.append(module.register_forward_hook(hook(name), with_kwargs=True))
    was_training = model.training
    model.eval()
    try:
        param = next((p for p in model.parameters()), None)
        dev = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        with torch.no_grad(), model_exits_fail(f"The model failed on a {c}x{h}x{w} input"):
            out = model(torch.zeros(1, c, h, w, device=dev, dtype=dtype))
    except RuntimeError as exc:
        first = first_line(exc)
        raise (too_small_error(model, (h, w), c) or ModelError(f"The model failed on a {c}x{h}x{w} input: {first}")) from None
    finally:
        for hd in hooks:
            hd.remove()
        model.train(was_training)
    return records, out


def _downsampling_points(
    records: list[_Record], modules: dict[str, nn.Module], size: tuple[int, int]
) -> tuple[list[DownsamplingPoint], tuple[int, int]]:
    """The recorded ops that make the map smaller (a global pool included), each with its role, and the smallest map
    size met (the net's final resolution)."""
    h, w = size
    points: list[DownsamplingPoint] = []
    smallest = (h, w)
    last_spatial = max((i for i, r in enumerate(records) if r[2] != (1, 1) and _kind(r[1]) != "global-pool"), default=-1)
    for i, (name, module, ins, outs, ch) in enumerate(records):
        kind = _kind(module)
        is_global = kind == "global-pool" or (outs == (1, 1) and ins != (1, 1) and kind in ("avgpool", "pool", "maxpool"))
        if ins == (1, 1):
            continue  # 1x1 maps after a global pool (classifier heads, squeeze-excitation MLPs)
        if not is_global and outs[0] * outs[1] < smallest[0] * smallest[1] and outs[0] >= 1:
            smallest = outs
        if not is_global and (outs[0] >= ins[0] and outs[1] >= ins[1]):
            continue
        stride = _opt_pair(getattr(module, "stride", None)) if not is_global else None
        if stride == (1, 1) and kind != "blurpool" and outs[0] > ins[0] // 2 and outs[1] > ins[1] // 2:
            continue  # a stride-1 layer without padding trims a border (a dense pool before a blur): no subsampling
        if is_global:
            # A global pool followed by more spatial layers gates channels (squeeze-excitation), it does not end the net.
            role = "global" if i > last_spatial else "squeeze"
        else:
            role = _local_role(name, module, kind, ins, (h, w), modules)
        points.append(
            DownsamplingPoint(
                name=name,
                kind="global-pool" if is_global else kind,
                module=type(module).__name__,
                kernel=_opt_pair(getattr(module, "kernel_size", None)) if kind != "blurpool" else _filter_size(module),
                stride=_opt_pair(getattr(module, "stride", None)),
                in_size=ins,
                out_size=outs,
                channels=ch,
                cumulative_stride=max(1, round(h / max(outs[0], 1))),
                role=role,
            )
        )
    return points, smallest


def _local_role(
    name: str, module: nn.Module, kind: str, ins: tuple[int, int], size: tuple[int, int], modules: dict[str, nn.Module]
) -> str:
    """Where a (non-global) downsampling sits: on the input image (stem), a 1x1 or blurred shortcut, or the main path;
    the patch and the layer picks treat them differently."""
    if ins == size:
        return "stem"
    if (kind == "conv" and _opt_pair(getattr(module, "kernel_size", None)) == (1, 1)) or (
        kind == "blurpool" and _on_shortcut(name, modules)
    ):
        return "shortcut"
    return "main"
