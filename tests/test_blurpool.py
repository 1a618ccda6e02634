from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.fx
from torch import nn

from benchmarks.bench_blurpool import FORMS
from shiftaudit.antialias.blurpool import (
    BlurPool2d,
    blur_pool2d,
    make_blur_kernel,
    normalize_pad_mode,
    pad_amounts,
)
from shiftaudit.antialias.filters import filter_2d, filter_names
from shiftaudit.errors import UsageError

MODES = ["reflect", "zero", "circular", "replicate"]
NP_MODE = {"reflect": "reflect", "zero": "constant", "circular": "wrap", "replicate": "edge"}


def _reference(x: np.ndarray, name: str, stride: int, mode: str) -> np.ndarray:
    """Independent numpy BlurPool: numpy.pad with the documented before/after split, then explicit sums."""
    k2 = filter_2d(name, dtype=torch.float64).numpy()
    k = k2.shape[0]
    before, after = pad_amounts(k)  # the same on both axes
    xp = np.pad(x, ((0, 0), (0, 0), (before, after), (before, after)), mode=NP_MODE[mode])
    h, w = x.shape[-2:]
    out = np.zeros(x.shape[:2] + (math.ceil(h / stride), math.ceil(w / stride)))
    for i in range(out.shape[-2]):
        for j in range(out.shape[-1]):
            patch = xp[..., i * stride : i * stride + k, j * stride : j * stride + k]
            out[..., i, j] = (patch * k2).sum(axis=(-2, -1))
    return out


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["rect2", "tri3", "binomial4", "binomial7", "window6"])
@pytest.mark.parametrize("size", [(1, 1), (2, 3), (3, 2), (5, 8), (9, 7)])
@pytest.mark.parametrize("stride", [2, 3])
def test_matches_numpy_reference_including_tiny_inputs(mode, name, size, stride):
    """Also covers reflect/circular pads wider than the input (numpy.pad's repeated reflection / wrapping)."""
    x = torch.randn(2, 3, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = blur_pool2d(x, name, stride, mode)
    assert y.shape == (2, 3, math.ceil(size[0] / stride), math.ceil(size[1] / stride))
    np.testing.assert_allclose(y.numpy(), _reference(x.numpy(), name, stride, mode), atol=1e-12)


@pytest.mark.parametrize("stride", [1, 2, 3, 4])
@pytest.mark.parametrize("size", [(7, 7), (8, 5), (1, 3)])
def test_delta_is_plain_subsampling(stride, size):
    x = torch.randn(2, 5, *size)
    for mode in MODES:
        y = BlurPool2d(5, "delta", stride, mode)(x)
        assert torch.equal(y, x[..., ::stride, ::stride])
    before = x.clone()
    blur_pool2d(x, "delta", stride).add_(1.0)  # a fresh tensor, not a view: in-place ops downstream spare the input
    assert torch.equal(x, before)


@pytest.mark.parametrize("name", filter_names())
def test_circular_blurpool_commutes_with_stride_multiple_shifts(name):
    x = torch.randn(2, 3, 16, 12)
    pool = BlurPool2d(3, name, stride=2, pad_mode="circular")
    y = pool(x)
    assert torch.equal(pool(torch.roll(x, (2, 0), (-2, -1))), torch.roll(y, (1, 0), (-2, -1)))
    assert torch.equal(pool(torch.roll(x, (-4, 6), (-2, -1))), torch.roll(y, (-2, 3), (-2, -1)))


@pytest.mark.parametrize("name", ["tri3", "binomial5", "binomial7", "window7", "lsq3"])
def test_circular_odd_filter_is_centred_blur_sampled_at_phase_zero(name):
    x = torch.randn(1, 2, 10, 14, dtype=torch.float64)
    k2 = filter_2d(name, dtype=torch.float64)
    c = (k2.shape[0] - 1) // 2
    dense = sum(k2[a, b] * torch.roll(x, (c - a, c - b), (-2, -1)) for a in range(k2.shape[0]) for b in range(k2.shape[1]))
    assert torch.allclose(blur_pool2d(x, name, 2, "circular"), dense[..., ::2, ::2], atol=1e-12)


def test_rect2_is_average_pooling():
    """App. E.1: Rect-2 then subsampling is AvgPool2d(2, 2) (fixes the even-filter phase convention)."""
    x = torch.randn(2, 4, 8, 6)
    assert torch.allclose(BlurPool2d(4, "rect2")(x), nn.functional.avg_pool2d(x, 2, 2), atol=1e-6)


@pytest.mark.parametrize("mode", ["reflect", "circular", "replicate"])
@pytest.mark.parametrize("name", filter_names())
def test_constant_image_stays_constant(mode, name):
    for size in [(7, 7), (2, 2), (1, 3)]:
        x = torch.full((1, 3, *size), 2.5)
        assert torch.allclose(BlurPool2d(3, name, 2, mode)(x), torch.full_like(x[..., ::2, ::2], 2.5), atol=1e-5)


def test_zero_padding_darkens_only_the_border():
    """Zero padding is true zero padding (as a conv's): interior samples of a constant stay constant, borders drop."""
    x = torch.ones(1, 1, 12, 12)
    y = BlurPool2d(1, "binomial5", 2, "zeros")(x)
    assert torch.allclose(y[..., 1:-1, 1:-1], torch.ones_like(y[..., 1:-1, 1:-1]), atol=1e-6)
    assert float(y[0, 0, 0, 0]) == pytest.approx((11 / 16) ** 2)  # two padded taps before (1 + 4 of 16 lost)
    assert float(y[0, 0, -1, -1]) == pytest.approx((15 / 16) ** 2)  # sample 10 of 12: one padded tap after


@pytest.mark.parametrize("size, expected", [(112, 56), (56, 28), (7, 4), (8, 4), (1, 1), (2, 1), (3, 2)])
def test_output_size_matches_torchvision_downsampling(size, expected):
    x = torch.randn(1, 2, size, size)
    maxpool = nn.MaxPool2d(3, 2, padding=1)(x).shape[-1]  # ResNet stem
    conv1x1 = nn.Conv2d(2, 2, 1, 2)(x).shape[-1]  # ResNet shortcut
    for name in ["delta", "rect2", "tri3", "binomial4", "binomial7"]:
        assert BlurPool2d(2, name)(x).shape[-2:] == (expected, expected) == (maxpool, maxpool) == (conv1x1, conv1x1)


def test_reflect_on_tiny_input_falls_back_to_repeated_reflection():
    x = torch.tensor([[[[1.0, 2.0]]]])  # 1 x 2: a 7-tap reflect pad is wider than both axes
    y = blur_pool2d(x, "binomial7", 2, "reflect")
    # rows: a single row is replicated; columns: [1, 2] reflected periodically -> 2 1 2 [1 2] 1 2 1
    cols = np.array([2, 1, 2, 1, 2, 1, 2], dtype=np.float64)
    expected = (np.array([1, 6, 15, 20, 15, 6, 1]) / 64) @ cols
    assert y.shape == (1, 1, 1, 1) and float(y) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_and_channels_last(dtype):
    x = torch.randn(2, 8, 15, 16)
    ref = BlurPool2d(8, "binomial5")(x)
    pool = BlurPool2d(8, "binomial5").to(dtype)
    assert pool.kernel.dtype == dtype
    xl = x.to(dtype).contiguous(memory_format=torch.channels_last)
    y = pool(xl)
    assert y.dtype == dtype and y.shape == ref.shape
    assert torch.allclose(y.float(), ref, atol=5e-2, rtol=5e-2)
    # a float32 module on a half input uses the input's dtype
    assert BlurPool2d(None, "tri3")(x.to(dtype)).dtype == dtype


def test_channels_last_float32_matches_contiguous():
    x = torch.randn(2, 6, 13, 13)
    pool = BlurPool2d(6, "window7", pad_mode="reflect")
    assert torch.allclose(pool(x.contiguous(memory_format=torch.channels_last)), pool(x), atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_gradient_flows(mode):
    for size in [(6, 7), (2, 2)]:
        x = torch.randn(1, 2, *size, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t: blur_pool2d(t, "binomial4", 2, mode), (x,))
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    BlurPool2d(3, "tri3")(x).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_kernel_buffer_is_not_persistent_and_channels_adapt():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    model = nn.Sequential(conv, BlurPool2d(4, "binomial5"))
    assert list(model.state_dict()) == list(nn.Sequential(conv).state_dict()) == ["0.weight", "0.bias"]
    pool = model[1]
    assert pool.kernel.shape == (4, 1, 5, 5) and torch.allclose(pool.kernel[2, 0], filter_2d("binomial5"))
    x = torch.randn(1, 7, 10, 10)
    assert torch.allclose(pool(x), BlurPool2d(None, "binomial5")(x), atol=1e-6)  # other channel count still works
    assert BlurPool2d(None, "tri5").kernel.shape == (1, 1, 5, 5)
    assert make_blur_kernel("tri3", 3, torch.float64).shape == (3, 1, 3, 3)


def test_extra_repr_and_aliases():
    r = repr(BlurPool2d(64, "Bin-5", 2, "zeros"))
    assert "channels=64" in r and "binomial5" in r and "stride=2" in r and "'zero'" in r
    assert normalize_pad_mode("constant") == "zero" and normalize_pad_mode("Reflect") == "reflect"


def test_errors_are_usage_errors():
    with pytest.raises(UsageError, match="binomial5"):
        BlurPool2d(8, "binomal5")
    with pytest.raises(UsageError, match="reflect"):
        BlurPool2d(8, "tri3", pad_mode="mirror")
    with pytest.raises(UsageError):
        BlurPool2d(8, "tri3", stride=0)
    with pytest.raises(UsageError):
        blur_pool2d(torch.randn(3, 8, 8), "tri3")


def test_fx_traceable():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), BlurPool2d(4, "binomial5"), BlurPool2d(None, "rect2"))
    gm = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, 9, 9)
    assert torch.equal(gm(x), model(x))
    assert gm(torch.randn(1, 3, 3, 3)).shape == (1, 4, 1, 1)  # no shape was frozen into the graph
    assert any(n.op == "call_function" and "blur_pool2d" in str(n.target) for n in gm.graph.nodes)
    assert set(gm.state_dict()) == set(model.state_dict())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["tri3", "binomial4", "binomial5", "window7"])
@pytest.mark.parametrize("size", [(13, 16), (2, 3)])
def test_benchmark_forms_agree(mode, name, size):
    x = torch.randn(2, 4, *size)
    outs = {k: f(x, name, 2, mode) for k, f in FORMS.items()}
    for k, y in outs.items():
        assert y.shape == outs["strided"].shape
        assert torch.allclose(y, outs["strided"], atol=1e-6), k


@pytest.mark.slow  # a timed benchmark (~9 s); the forms' equality is checked above
def test_benchmark_quick_run_reports_ratios():
    from benchmarks import bench_blurpool

    res = bench_blurpool.run(quick=True)
    forms = {r["form"] for r in res["rows"]}
    assert {"strided", "separable", "naive"} <= forms
    assert all(r["ms"] > 0 for r in res["rows"])
    assert all(r["ratio"] == 1.0 for r in res["rows"] if r["form"] == "strided")


@pytest.mark.parametrize("taps", [3, 5, 7])
@pytest.mark.parametrize("size", [(13, 16), (28, 28)])
def test_matches_timm_blurpool_for_odd_binomial_filters(taps, size):
    """timm's BlurPool2d (binomial, reflect, symmetric padding) is an independent implementation of the same layer.

    Even filters are left out: timm pads them symmetrically, the paper's layer (and ours) one pixel more after.
    The benchmark's third-party rows compare against it, so it must be the same computation.
    """
    timm_layers = pytest.importorskip("timm.layers")
    x = torch.randn(2, 5, *size, dtype=torch.float64)
    ref = timm_layers.BlurPool2d(5, filt_size=taps, stride=2).to(torch.float64).eval()(x)
    ours = blur_pool2d(x, f"binomial{taps}", 2, "reflect")
    assert ours.shape == ref.shape
    assert torch.allclose(ours, ref, rtol=0, atol=1e-12)


def test_benchmark_compares_against_timm_when_installed():
    pytest.importorskip("timm")
    from benchmarks import bench_blurpool

    refs = bench_blurpool._third_party(8, "binomial5", 2, "reflect")
    assert "timm" in refs
    x = torch.randn(1, 8, 12, 12)
    assert torch.allclose(refs["timm"](x), blur_pool2d(x, "binomial5", 2, "reflect"), atol=1e-6)
    assert "timm" not in bench_blurpool._third_party(8, "tri3", 2, "reflect")  # timm builds binomial filters only
