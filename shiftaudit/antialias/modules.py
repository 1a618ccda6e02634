"""The building blocks a patch inserts. None of them holds a persistent tensor, so state dicts keep their keys."""

from __future__ import annotations

import math

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from shiftaudit.sizes import pair


def pool_output_size(n: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool) -> int:
    """Output length of a strided PyTorch pool (the formula of nn.MaxPool2d's documentation)."""
    span = n + 2 * padding - dilation * (kernel - 1) - 1
    out = (math.ceil(span / stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= n + padding:
        out -= 1
    return out


def _running_max(x: torch.Tensor, dim: int, taps: int, dilation: int) -> torch.Tensor:
    """Max over ``taps`` samples ``dilation`` apart along ``dim`` (no padding): one ``torch.maximum`` per extra tap."""
    n = x.shape[dim] - dilation * (taps - 1)
    out = torch.maximum(x.narrow(dim, 0, n), x.narrow(dim, dilation, n)) if taps > 1 else x.narrow(dim, 0, n).clone()
    for t in range(2, taps):
        torch.maximum(out, x.narrow(dim, t * dilation, n), out=out)
    return out


@torch.fx.wrap
def dense_max_pool2d(
    x: torch.Tensor, kernel: tuple[int, int], dilation: tuple[int, int], pads: tuple[int, int, int, int]
) -> torch.Tensor:
    """``max_pool2d`` at stride 1 after ``-inf`` padding ``pads`` (left, right, top, bottom), as shifted maxima.

    Why: on CPU torch's stride-1 max pool is several times slower than shifted ``torch.maximum`` calls (an
    8x64x112x112 3x3 pool: ~240 ms against ~15-20 ms on one thread). Max is exact, so the values equal max_pool2d's
    (``torch.equal``, NaNs propagate); only the sign of a zero chosen among tied -0/+0, and a NaN's sign bit, may
    differ, since the vectorised maximum does not always keep the first operand on ties. Opaque to ``torch.fx``
    (its slicing reads shapes).
    """
    if any(pads):
        x = F.pad(x, pads, value=float("-inf"))
    return _running_max(_running_max(x, -1, kernel[1], dilation[1]), -2, kernel[0], dilation[0])


@torch.fx.wrap
def dense_avg_pool2d(x: torch.Tensor, kernel: tuple[int, int]) -> torch.Tensor:
    """``avg_pool2d`` at stride 1 without padding, as shifted sums added in the pool's (row-major) order.

    Why: torch's stride-1 average pool is 1.3-6x slower than this on contiguous (NCHW) CPU tensors. The window is
    summed in the order the CPU kernel sums it and divided once by its size, so float32/float64 results are equal
    (tested); callers use it only there, and not for channels_last, where the pool kernel is the faster one.
    """
    (kh, kw), (n, m) = kernel, (x.shape[-2] - kernel[0] + 1, x.shape[-1] - kernel[1] + 1)
    acc = x.narrow(-2, 0, n).narrow(-1, 0, m).clone()
    for i, j in ((i, j) for i in range(kh) for j in range(kw)):
        if i or j:
            acc.add_(x.narrow(-2, i, n).narrow(-1, j, m))
    return acc / (kh * kw)


class PoolBlur2d(nn.Module):
    """A strided pool evaluated densely (stride 1), then blurred and subsampled: Eq. 3 of the paper.

    ``MaxPool(k, s)`` becomes ``MaxPool(k, 1)`` + ``BlurPool(s)`` (MaxBlurPool); ``AvgPool(k, s)`` becomes
    ``AvgPool(k, 1)`` + ``BlurPool(s)``. The output has the original pool's size, ``ceil_mode`` included. With
    ``circular`` (set by ``--circular-conv`` or ``--pad circular``) the dense pool wraps around the border as circular
    convs do, so the whole layer is exactly equivariant to shifts by multiples of its stride; its output is then ceil(H / s) long.
    """

    def __init__(self, pool: nn.MaxPool2d | nn.AvgPool2d, blur: nn.Module, circular: bool = False) -> None:
        super().__init__()
        self.kernel = pair(pool.kernel_size)
        self.stride = pair(pool.stride if pool.stride is not None else pool.kernel_size)
        self.padding = pair(pool.padding)
        self.dilation = pair(getattr(pool, "dilation", 1))
        self.ceil_mode = bool(pool.ceil_mode)
        self.circular = bool(circular)
        pool.stride = (1, 1) if isinstance(pool.stride, tuple) else 1
        pool.ceil_mode = False
        if self.circular:
            pool.padding = 0
        self.pool = pool
        self.blur = blur

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.circular:
            x = F.pad(x, self._circular_pads(), mode="circular")
        if self._fast_max(x):
            return self.blur(dense_max_pool2d(x, self.kernel, self.dilation, self._max_pads(x)))
        if self.ceil_mode and not self.circular:
            x = self._pad_for_ceil_mode(x)
        if self._fast_avg(x):
            return self.blur(dense_avg_pool2d(x, self.kernel))
        return self.blur(self.pool(x))

    def _circular_pads(self) -> tuple[int, int, int, int]:
        """The dense pool wraps around like the convs: output index i is the window starting at i - padding."""
        (kh, kw), (ph, pw), (dh, dw) = self.kernel, self.padding, self.dilation
        return (pw, dw * (kw - 1) - pw, ph, dh * (kh - 1) - ph)

    def _fast_max(self, x: torch.Tensor) -> bool:
        """Whether :func:`dense_max_pool2d` may stand in for ``self.pool`` (same values, ``torch.equal``).

        Not while gradients are recorded (``torch.maximum`` splits a tie's gradient where max_pool2d routes it to
        one input), nor for pool subclasses, indices or hooks on the pool (they expect it to run), nor integers.
        """
        pool = self.pool
        return type(pool) is nn.MaxPool2d and not pool.return_indices and self._may_skip_pool(x) and x.is_floating_point()

    def _fast_avg(self, x: torch.Tensor) -> bool:
        """Whether :func:`dense_avg_pool2d` gives ``self.pool``'s values: unpadded, plain divisor, contiguous float32/64."""
        pool = self.pool
        return (
            type(pool) is nn.AvgPool2d
            and pool.divisor_override is None
            and pair(pool.padding) == (0, 0)
            and x.dtype in (torch.float32, torch.float64)
            and x.is_contiguous()
            and self._may_skip_pool(x)
        )

    def _may_skip_pool(self, x: torch.Tensor) -> bool:
        """No autograd recording (the pools' own backward is kept), no hooks on the pool, a 4-D input."""
        pool = self.pool
        return (
            not (pool._forward_hooks or pool._forward_pre_hooks)
            and x.dim() == 4
            and not (x.requires_grad and torch.is_grad_enabled())
        )

    def _max_pads(self, x: torch.Tensor) -> tuple[int, int, int, int]:
        """-inf padding (left, right, top, bottom) of the fast path: the pool's own plus the ceil_mode extension."""
        if self.circular:
            return (0, 0, 0, 0)
        (ph, pw), (eh, ew) = self.padding, self._ceil_extra(x)
        return (pw, pw + ew, ph, ph + eh)

    def _ceil_extra(self, x: torch.Tensor) -> tuple[int, int]:
        """Rows and columns ceil_mode's last, partial window needs past the padded input (0 without ceil_mode)."""
        if not self.ceil_mode:
            return (0, 0)
        extra = []
        for n, k, s, p, d in zip(x.shape[-2:], self.kernel, self.stride, self.padding, self.dilation):
            want = pool_output_size(n, k, s, p, d, True)
            dense = n + 2 * p - d * (k - 1)
            extra.append(max(0, (want - 1) * s + 1 - dense))
        return (extra[0], extra[1])

    def _pad_for_ceil_mode(self, x: torch.Tensor) -> torch.Tensor:
        """ceil_mode keeps a last, partial window: extend the input so the dense map reaches it.

        Max pools see the extension as -inf (the partial window's maximum is exact); average pools see a copy of
        the border.
        """
        eh, ew = self._ceil_extra(x)
        if not (eh or ew):
            return x
        if isinstance(self.pool, nn.MaxPool2d):
            return F.pad(x, (0, ew, 0, eh), value=float("-inf"))
        return F.pad(x, (0, ew, 0, eh), mode="replicate")


class _ConvWithBlur(nn.Conv2d):
    """A conv at stride 1 that owns a blur-subsample; its weights stay ``weight``/``bias`` (state dicts unchanged)."""

    blur: nn.Module

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, blur: nn.Module) -> _ConvWithBlur:
        new = cls(
            conv.in_channels,
            conv.out_channels,
            pair(conv.kernel_size),
            stride=1,
            padding=conv.padding if isinstance(conv.padding, str) else pair(conv.padding),
            dilation=pair(conv.dilation),
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device="meta",
        )
        new.weight = conv.weight
        new.bias = conv.bias
        new.train(conv.training)
        new.blur = blur
        return new


class ConvThenBlur2d(_ConvWithBlur):
    """A strided conv run at stride 1 and followed by a blur-subsample.

    Used where the graph cannot be traced, so the blur cannot be moved past the conv's norm and activation.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blur(super().forward(x))


class BlurThenConv2d(_ConvWithBlur):
    """A blur-subsample followed by the (1x1) conv at stride 1: the paper's rule for strided shortcut convs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.blur(x))
