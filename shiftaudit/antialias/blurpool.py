"""BlurPool: low-pass filter then subsample, in one strided depthwise convolution (§3.2, Eq. 3).

``Downsample_s(Blur(X))`` only needs the blurred signal at every s-th position, so the blur is evaluated there and
nowhere else: pad once, then ``F.conv2d(groups=C, stride=s)`` with the 2-D (outer product) filter (zero padding of
an odd filter is left to the conv itself, which gives the same bits without the padded copy). The benchmark
(``benchmarks/bench_blurpool.py``) compares this against a separable two-pass form and a blur-then-slice form.

Conventions (chosen so that patched networks keep their shapes and the circular case is exact):

- Padding for a k-tap filter is ``(k - 1) // 2`` before and ``k // 2`` after, on each axis. The output therefore has
  ``ceil(H / s)`` rows, the size ``MaxPool2d(3, 2, padding=1)`` and stride-2 3x3/1x1 convs give in torchvision's
  ResNets (112 -> 56, 7 -> 4). For odd k the filter is centred: with circular padding the output is exactly the
  circular blur sampled at phase 0 (rows 0, s, 2s, ...). For even k the extra tap looks forward, so rect2 with
  stride 2 is ``AvgPool2d(2, 2)`` on even sizes (App. E.1).
- Pad modes: ``reflect`` (default), ``zero``, ``circular`` (the paper's testbed, §4.1), ``replicate``. Reflect and
  circular padding wider than the input (tiny late-stage maps, e.g. 2x2 in a ResNet on 32x32 images) extend the
  signal by repeated reflection / wrapping, as ``numpy.pad`` does, instead of failing; a size-1 axis is replicated.
- The delta filter is plain subsampling ``x[..., ::s, ::s]`` (returned as a fresh tensor, never a view).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from shiftaudit.antialias.filters import canonical_filter_name, filter_2d, get_filter_info
from shiftaudit.errors import UsageError

PAD_MODES = ("reflect", "zero", "circular", "replicate")
_PAD_ALIASES = {
    "reflect": "reflect",
    "reflection": "reflect",
    "zero": "zero",
    "zeros": "zero",
    "constant": "zero",
    "circular": "circular",
    "wrap": "circular",
    "replicate": "replicate",
    "edge": "replicate",
}


def normalize_pad_mode(mode: str) -> str:
    """One of :data:`PAD_MODES` ("zeros"/"constant" mean zero, "wrap" circular, "edge" replicate)."""
    key = str(mode).strip().lower()
    if key not in _PAD_ALIASES:
        raise UsageError(f"Unknown blur padding {mode!r}; choose one of {', '.join(PAD_MODES)}.")
    return _PAD_ALIASES[key]


def pad_amounts(taps: int) -> tuple[int, int]:
    """(before, after) padding of a ``taps``-long filter; see the module docstring for why."""
    return (taps - 1) // 2, taps // 2


def _pair(stride: int | Sequence[int]) -> tuple[int, int]:
    s = (int(stride), int(stride)) if isinstance(stride, int) else tuple(int(v) for v in stride)
    if len(s) != 2 or min(s) < 1:
        raise UsageError(f"Blur stride must be a positive integer or a pair of them, got {stride!r}.")
    return s


def make_blur_kernel(
    name: str, channels: int = 1, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """Depthwise conv weight ``(channels, 1, k, k)``: the 2-D filter repeated once per channel."""
    k2 = filter_2d(name, dtype=dtype, device=device)
    return k2[None, None].repeat(int(channels), 1, 1, 1)


def _as_kernel(kernel: torch.Tensor | str | Sequence[float], ref: torch.Tensor) -> torch.Tensor:
    """Any accepted kernel form -> ``(1 or C, 1, kh, kw)`` in the input's dtype and device."""
    if isinstance(kernel, str):
        return filter_2d(kernel, dtype=ref.dtype, device=ref.device)[None, None]
    k = torch.as_tensor(kernel)
    if k.dim() == 1:  # a 1-D filter: make it separable 2-D (outer product in float64 for accuracy)
        k64 = k.to(torch.float64)
        k = torch.outer(k64, k64)
    if k.dim() == 2:
        k = k[None, None]
    if k.dim() != 4 or k.shape[1] != 1:
        raise UsageError(
            f"Blur kernel must be a name, a 1-D or 2-D filter, or a (C, 1, k, k) weight; got shape {tuple(k.shape)}."
        )
    return k.to(dtype=ref.dtype, device=ref.device)


def _index_pad(x: torch.Tensor, dim: int, before: int, after: int, mode: str) -> torch.Tensor:
    """Reflect/circular padding of any width along one axis, via a gather (numpy.pad semantics)."""
    n = x.shape[dim]
    idx = torch.arange(-before, n + after, device=x.device)
    if mode == "circular":
        idx = idx % n
    elif n == 1:
        idx = torch.zeros_like(idx)
    else:  # reflection without edge repeat is periodic with period 2(n - 1)
        period = 2 * (n - 1)
        idx = idx % period
        idx = torch.where(idx >= n, period - idx, idx)
    return x.index_select(dim, idx)


def pad_for_blur(x: torch.Tensor, kh: int, kw: int, pad_mode: str = "reflect") -> torch.Tensor:
    """Pad the last two axes for a ``kh x kw`` filter with the module's before/after convention."""
    mode = normalize_pad_mode(pad_mode)
    (top, bottom), (left, right) = pad_amounts(kh), pad_amounts(kw)
    if top == bottom == left == right == 0:
        return x
    if mode == "zero":
        return F.pad(x, (left, right, top, bottom), mode="constant", value=0.0)
    if mode == "replicate":
        return F.pad(x, (left, right, top, bottom), mode="replicate")
    h, w = x.shape[-2], x.shape[-1]
    # torch's reflect needs pad < size, circular pad <= size; outside that, gather (rare: tiny maps only).
    longest_h, longest_w = max(top, bottom), max(left, right)
    fits = (longest_h < h and longest_w < w) if mode == "reflect" else (longest_h <= h and longest_w <= w)
    if fits:
        return F.pad(x, (left, right, top, bottom), mode=mode)
    return _index_pad(_index_pad(x, -2, top, bottom, mode), -1, left, right, mode)


@torch.fx.wrap
def blur_pool2d(
    x: torch.Tensor,
    kernel: torch.Tensor | str | Sequence[float] = "binomial5",
    stride: int | Sequence[int] = 2,
    pad_mode: str = "reflect",
) -> torch.Tensor:
    """Blur ``x`` (N, C, H, W) with a low-pass filter and keep every ``stride``-th sample: output ``ceil(H/s)``.

    ``kernel`` is a filter name, a 1-D filter (made separable), a 2-D filter, or a depthwise weight ``(C or 1, 1, kh, kw)``.
    Opaque to ``torch.fx`` (wrapped), so tracing a model that contains it never branches on tensor shapes.
    """
    if x.dim() != 4:
        raise UsageError(f"BlurPool expects a 4-D (N, C, H, W) input, got shape {tuple(x.shape)}.")
    sh, sw = _pair(stride)
    k = _as_kernel(kernel, x)
    kh, kw = k.shape[-2], k.shape[-1]
    if kh == kw == 1 and bool((k == 1).all()):  # delta: plain subsampling, bit-exact
        return x[..., ::sh, ::sw].clone(memory_format=torch.preserve_format)
    c = x.shape[1]
    if k.shape[0] != c:
        k = k[:1].expand(c, 1, kh, kw)
    if kh % 2 == 1 and kw % 2 == 1 and normalize_pad_mode(pad_mode) == "zero":
        # symmetric zero padding: the conv pads itself, skipping a padded copy (1.5-8x faster on CPU, same bits)
        return F.conv2d(x, k, stride=(sh, sw), padding=((kh - 1) // 2, (kw - 1) // 2), groups=c)
    return F.conv2d(pad_for_blur(x, kh, kw, pad_mode), k, stride=(sh, sw), groups=c)


class BlurPool2d(nn.Module):
    """Anti-aliased downsampling: blur with a Table 1 filter, subsample by ``stride`` (Eq. 3's Downsample∘Blur).

    The kernel is a non-persistent buffer: it follows ``.to()``/``.half()`` but never enters ``state_dict``, so a
    patched model saves and loads with exactly the original model's keys. ``channels=None`` builds one shared
    kernel and expands it to the input's channel count on each call; a given ``channels`` stores the full
    depthwise weight (a different channel count at run time still works).
    """

    kernel: torch.Tensor  # a buffer

    def __init__(self, channels: int | None = None, filt: str = "binomial5", stride: int = 2, pad_mode: str = "reflect") -> None:
        super().__init__()
        if channels is not None and int(channels) < 1:
            raise UsageError(f"BlurPool channels must be positive, got {channels}.")
        self.channels = None if channels is None else int(channels)
        self.filt = canonical_filter_name(filt)
        self.stride = _pair(stride)[0] if isinstance(stride, int) else _pair(stride)
        self.pad_mode = normalize_pad_mode(pad_mode)
        self.register_buffer("kernel", make_blur_kernel(self.filt, self.channels or 1), persistent=False)

    @property
    def taps(self) -> int:
        return get_filter_info(self.filt).taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return blur_pool2d(x, self.kernel, self.stride, self.pad_mode)

    def extra_repr(self) -> str:
        ch = "" if self.channels is None else f"channels={self.channels}, "
        return f"{ch}filt={self.filt!r}, stride={self.stride}, pad_mode={self.pad_mode!r}"
