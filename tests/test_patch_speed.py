"""The fast paths of patched models give the values of the formulations they replace.

``PoolBlur2d`` computes its dense (stride-1) max pool as shifted maxima and plain average pools as shifted sums, and
``blur_pool2d`` lets the conv do symmetric zero padding. Each is compared here against the previous code, written
out below, with ``torch.equal`` (and NaN positions where the dense max alone is checked).
"""

from __future__ import annotations

import itertools
import random
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from shiftaudit.antialias import patch
from shiftaudit.antialias.blurpool import BlurPool2d, blur_pool2d, pad_for_blur
from shiftaudit.antialias.filters import filter_2d
from shiftaudit.antialias.modules import PoolBlur2d, dense_avg_pool2d, dense_max_pool2d

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def old_pool_blur(m: PoolBlur2d, x: torch.Tensor) -> torch.Tensor:
    """PoolBlur2d.forward before the fast path: pad (circular wrap or ceil_mode's -inf), stride-1 pool, blur."""
    if m.circular:
        (kh, kw), (ph, pw), (dh, dw) = m.kernel, m.padding, m.dilation
        x = F.pad(x, (pw, dw * (kw - 1) - pw, ph, dh * (kh - 1) - ph), mode="circular")
    elif m.ceil_mode:
        x = m._pad_for_ceil_mode(x)
    return m.blur(m.pool(x))


def old_blur_pool2d(x: torch.Tensor, name: str, stride: int, pad_mode: str) -> torch.Tensor:
    """blur_pool2d before the fast path: always pad explicitly, then the strided depthwise conv."""
    k = filter_2d(name, dtype=x.dtype)[None, None]
    c = x.shape[1]
    return F.conv2d(pad_for_blur(x, k.shape[-2], k.shape[-1], pad_mode), k.expand(c, 1, -1, -1), stride=stride, groups=c)


def tricky(shape: tuple[int, ...], dtype: torch.dtype, channels_last: bool = False, seed: int = 0) -> torch.Tensor:
    """Random values with many ties: zeros of both signs (as after ReLU), repeated values, infinities."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).round(decimals=1)
    x[torch.rand(shape, generator=g) < 0.3] = 0.0
    x[torch.rand(shape, generator=g) < 0.15] = -0.0
    x.view(-1)[::17] = float("inf")
    x.view(-1)[5::23] = float("-inf")
    x = x.to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def assert_same_values(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal values (torch.equal) and NaNs at the same places.

    Not compared: the sign of a zero picked among tied -0/+0 and a NaN's sign bit. Vectorised ``torch.maximum``
    does not keep either operand consistently on such ties (the SIMD max returns its second operand), so these
    bits can differ from max_pool2d's; they compare equal, and no conv/BN/ReLU downstream can tell them apart
    unless every term of a sum is a zero (the resnet18 test below checks whole outputs with torch.equal).
    """
    assert a.shape == b.shape and a.dtype == b.dtype
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "kernel,dilation,padding",
    [
        ((3, 3), (1, 1), (1, 1)),
        ((2, 2), (1, 1), (0, 0)),
        ((3, 2), (1, 1), (1, 0)),
        ((5, 5), (1, 1), (2, 2)),
        ((3, 3), (2, 2), (1, 1)),
        ((3, 3), (2, 1), (0, 1)),
        ((1, 3), (1, 1), (0, 1)),
        ((4, 4), (3, 1), (2, 2)),
    ],
)
def test_dense_max_matches_stride_one_max_pool2d(kernel, dilation, padding, dtype):
    for shape, cl in [((2, 3, 9, 11), False), ((1, 4, 8, 7), True), ((1, 2, 13, 6), False)]:
        x = tricky(shape, dtype, cl)
        x[0, 0, 1, 1] = float("nan")
        ph, pw = padding
        want = F.max_pool2d(x, kernel, 1, padding, dilation)
        got = dense_max_pool2d(x, kernel, dilation, (pw, pw, ph, ph))
        assert_same_values(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kernel", [(2, 2), (3, 3), (3, 2), (1, 3), (5, 5), (7, 7)])
def test_dense_avg_matches_stride_one_avg_pool2d(kernel, dtype):
    for shape, cl in [((2, 3, 9, 11), False), ((4, 64, 28, 28), False), ((1, 16, 57, 56), True), ((1, 2, 7, 8), False)]:
        g = torch.Generator().manual_seed(shape[-1])
        x = (3 * torch.randn(shape, generator=g)).to(dtype)
        x = x.contiguous(memory_format=torch.channels_last) if cl else x
        assert torch.equal(dense_avg_pool2d(x, kernel), F.avg_pool2d(x, kernel, 1))


def _pool_configs() -> list[tuple]:
    """Kernel, stride, padding, dilation, ceil_mode, circular: the grid, less combinations torch refuses."""
    grid = itertools.product([2, 3, (3, 2)], [2, 3, (2, 1)], [0, 1], [1, 2], [False, True], [False, True])
    return [c for c in grid if c[2] <= (c[0] if isinstance(c[0], int) else min(c[0])) // 2]


@pytest.mark.parametrize("kernel,stride,padding,dilation,ceil_mode,circular", _pool_configs())
def test_pool_blur_fast_path_matches_the_old_formulation(kernel, stride, padding, dilation, ceil_mode, circular):
    rng = random.Random(str((kernel, stride, padding, dilation, ceil_mode, circular)))
    for size in [(7, 9), (8, 8), (13, 6)]:
        dtype = rng.choice(DTYPES)
        pad_mode = "circular" if circular else rng.choice(["reflect", "zero", "replicate"])
        if dilation == 1 and rng.random() < 0.5:  # average pools have no dilation
            pool: nn.Module = nn.AvgPool2d(kernel, stride, padding, ceil_mode=ceil_mode)
        else:
            pool = nn.MaxPool2d(kernel, stride, padding, dilation=dilation, ceil_mode=ceil_mode)
        blur_stride = stride if isinstance(stride, int) else stride[0]
        m = PoolBlur2d(
            pool, BlurPool2d(None, rng.choice(["tri3", "binomial5", "rect2"]), blur_stride, pad_mode), circular=circular
        ).to(dtype)
        x = tricky((2, 3, *size), dtype, channels_last=rng.random() < 0.5, seed=rng.randrange(1000))
        with torch.no_grad():
            try:
                want = old_pool_blur(m, x)
            except RuntimeError:  # a window wider than the (padded) input: torch refuses, so must we
                with pytest.raises(RuntimeError):
                    m(x)
                continue
            assert_same_values(m(x), want)  # infinities in the input make NaNs in the blur


def test_patched_average_pools_match_the_old_formulation(monkeypatch):
    """Average pools (DenseNet transitions, ceil_mode stems) in a patched model, NCHW and channels_last."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.AvgPool2d(3, 2, ceil_mode=True),
        nn.AvgPool2d(2, 2, padding=1),
        nn.Flatten(),
    )
    model = patch(model).eval()
    assert sum(isinstance(m, PoolBlur2d) for m in model.modules()) == 3
    calls = []
    with monkeypatch.context() as mp, torch.inference_mode():
        mp.setattr("shiftaudit.antialias.modules.dense_avg_pool2d", lambda x, k: calls.append(k) or dense_avg_pool2d(x, k))
        model(torch.randn(1, 3, 37, 30))
    assert calls == [(2, 2), (3, 3)]  # the padded pool keeps nn.AvgPool2d
    for dtype, cl in [(torch.float32, False), (torch.float64, False), (torch.float32, True)]:
        m = model.to(dtype)
        x = torch.randn(2, 3, 37, 30, dtype=dtype)
        x = x.contiguous(memory_format=torch.channels_last) if cl else x
        with torch.inference_mode():
            fast = m(x)
            with monkeypatch.context() as mp:
                mp.setattr(PoolBlur2d, "forward", old_pool_blur)
                slow = m(x)
        assert torch.equal(fast, slow)


def test_pool_blur_records_gradients_through_max_pool2d():
    """While autograd records, the pool itself runs, so ties route their gradient exactly as before."""
    m = PoolBlur2d(nn.MaxPool2d(3, 2, 1), BlurPool2d(None, "binomial5", 2))
    x = tricky((1, 2, 10, 10), torch.float64).clamp(-5, 5).requires_grad_()
    m(x).sum().backward()
    g_new = x.grad.clone()
    x.grad = None
    old_pool_blur(m, x).sum().backward()
    assert torch.equal(g_new, x.grad)


def test_pool_blur_with_hooks_on_the_pool_still_runs_it():
    m = PoolBlur2d(nn.MaxPool2d(3, 2, 1), BlurPool2d(None, "tri3", 2))
    seen = []
    m.pool.register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
    with torch.no_grad():
        m(torch.randn(1, 2, 8, 8))
    assert seen == [torch.Size([1, 2, 8, 8])]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["tri3", "binomial5", "binomial7", "binomial4", "rect2"])
def test_zero_padded_blur_matches_explicit_padding(name, dtype):
    shapes = [(2, 3, 7, 9), (1, 1, 1, 1), (1, 2, 2, 3), (2, 64, 14, 15), (1, 16, 28, 28), (2, 8, 56, 56)]
    for (shape, stride), cl in itertools.product(itertools.product(shapes, [1, 2, 3, (2, 1)]), [False, True]):
        x = tricky(shape, dtype, cl).nan_to_num(posinf=3.0, neginf=-3.0)
        assert torch.equal(blur_pool2d(x, name, stride, "zeros"), old_blur_pool2d(x, name, stride, "zero"))


def old_blur_forward(self: BlurPool2d, x: torch.Tensor) -> torch.Tensor:
    """BlurPool2d.forward before the fast path (non-delta filters): explicit padding, then the depthwise conv."""
    k = self.kernel.expand(x.shape[1], 1, -1, -1)
    return F.conv2d(pad_for_blur(x, k.shape[-2], k.shape[-1], self.pad_mode), k, stride=self.stride, groups=x.shape[1])


@pytest.mark.parametrize("pad", ["reflect", "zero", "circular"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_patched_resnet18_output_is_unchanged(pad, channels_last, monkeypatch):
    """A whole patched torchvision resnet18: the fast forward against the same model run the old way."""
    torch.manual_seed(0)
    model = patch(torchvision.models.resnet18(weights=None, num_classes=10), pad=pad).eval()
    assert any(isinstance(m, PoolBlur2d) for m in model.modules())
    x = torch.randn(2, 3, 67, 64)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        fast = model(x)
        monkeypatch.setattr(PoolBlur2d, "forward", old_pool_blur)
        monkeypatch.setattr(BlurPool2d, "forward", old_blur_forward)
        slow = model(x)
    assert torch.equal(fast, slow)


def test_traced_patched_model_follows_the_input_size():
    """TorchScript export traces the fast path; its slices must follow the input's size, not the example's."""
    model = patch(torchvision.models.resnet18(weights=None, num_classes=3), pad="zero").eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notices
        traced = torch.jit.trace(model, torch.randn(1, 3, 64, 64), check_trace=False)
        for size in [(64, 64), (67, 80)]:
            x = torch.randn(1, 3, *size)
            assert torch.equal(traced(x), model(x))
