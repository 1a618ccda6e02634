"""Per-layer equivariance distances: exact against explicit upsampling, and the paper's modulo-2^k property."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from shiftaudit.engine.runner import audit
from shiftaudit.metrics.layers import (
    FeatureDistance,
    LayerSpec,
    _cos_distance,
    _normalise,
    select_layers,
)
from shiftaudit.report.heatmaps import plot_layer_heatmaps
from shiftaudit.shifts.sets import ShiftSet


def circular_vgg(channels=(8, 12, 16), classes: int = 5, pool: type = nn.MaxPool2d) -> nn.Sequential:
    """A VGG-style stack with circular padding: conv-BN-ReLU x2, then a stride-2 pool, per stage."""
    layers: list[nn.Module] = []
    c_in = 3
    for c in channels:
        for _ in range(2):
            layers += [nn.Conv2d(c_in, c, 3, padding=1, padding_mode="circular"), nn.BatchNorm2d(c), nn.ReLU()]
            c_in = c
        layers.append(pool(2))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, classes)]
    model = nn.Sequential(*layers)
    for m in model.modules():  # non-trivial BN statistics so every layer does something
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def naive_equivariance(zero: torch.Tensor, shifted: torch.Tensor, dh: int, dw: int, size: tuple[int, int]) -> float:
    """Eq. 1 by the book: upsample both maps to the input size, roll one, cosine distance per location, mean."""
    up0 = F.interpolate(zero[None], size=size, mode="nearest")[0]
    up1 = F.interpolate(shifted[None], size=size, mode="nearest")[0]
    rolled = torch.roll(up0, (dh, dw), (-2, -1))
    num = (rolled * up1).sum(0)
    den = rolled.norm(dim=0) * up1.norm(dim=0)
    return float((1 - num / den).mean())


@pytest.mark.parametrize("input_size, feat_size", [((16, 16), (4, 4)), ((12, 16), (3, 8)), ((10, 10), (4, 4)), ((8, 8), (1, 1))])
def test_low_resolution_decomposition_equals_explicit_upsampling(input_size, feat_size):
    torch.manual_seed(0)
    ss = ShiftSet.window(input_size, max(input_size) // 2)
    fd = FeatureDistance([LayerSpec("x", "x", "output")], ss)
    zero = torch.randn(3, 5, *feat_size, dtype=torch.float64)
    shifted = torch.randn(len(ss), 5, *feat_size, dtype=torch.float64)
    k = torch.arange(len(ss))
    img = k % 3
    fd._dh, fd._dw = torch.as_tensor(ss.dh), torch.as_tensor(ss.dw)
    got = fd._equivariance(_normalise(zero)[img], _normalise(shifted), k, feat_size)
    for i in range(0, len(ss), 7):
        want = naive_equivariance(zero[img[i]].float(), shifted[i].float(), int(ss.dh[i]), int(ss.dw[i]), input_size)
        assert float(got[i]) == pytest.approx(want, abs=2e-5)


def test_zero_vectors_are_identical_features():
    z = torch.zeros(1, 3, 2, 2)
    x = torch.ones(1, 3, 2, 2)
    assert float(_cos_distance(_normalise(z), _normalise(z))) == 0.0
    assert float(_cos_distance(_normalise(z), _normalise(x))) == 1.0
    assert float(_cos_distance(_normalise(x), _normalise(x))) == pytest.approx(0.0, abs=1e-6)


@pytest.fixture(scope="module")
def vgg_layers():
    torch.manual_seed(0)
    model = circular_vgg().double()
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    return audit(model, x, device="cpu", layers="auto").metrics["layers"]


def test_modulo_two_to_the_k_equivariance_after_k_downsamplings(vgg_layers):
    ss = ShiftSet.all_shifts((16, 16))
    for layer in vgg_layers["layers"]:
        eq = np.array([[v for v in row] for row in layer["equivariance"]["map"]], dtype=float)
        hs, ws = np.array(vgg_layers["dh"])[:, None], np.array(vgg_layers["dw"])[None, :]
        stride = layer["stride"]
        k = int(np.log2(stride)) if layer["resolution"] != [1, 1] else None
        if layer["name"] in ("pixels",) or "(in)" in layer["name"] and stride == 1 or "(dense)" in layer["name"] and stride == 1:
            assert eq.max() < 1e-9, layer["name"]  # before any downsampling: exactly equivariant at every shift
            assert layer["exact_modulo"] == 1
        if k is not None and k >= 1:
            n = 2**k
            on = (hs % n == 0) & (ws % n == 0)
            assert eq[on].max() < 1e-9, layer["name"]
            assert eq[~on].min() > 1e-6, layer["name"]  # and broken everywhere else
            assert layer["exact_modulo"] == n
    assert len(ss) == 256


def test_one_by_one_layers_equivariance_equals_invariance(vgg_layers):
    for layer in vgg_layers["layers"]:
        if layer["resolution"] == [1, 1]:
            assert layer["equivariance"]["map"] == layer["invariance"]["map"]
        assert layer["reference_distance"] > 0


def test_auto_layers_follow_fig4():
    model = circular_vgg()
    names = [spec.name for spec in select_layers(model, "auto", (16, 16))]
    assert names[0] == "pixels" and names[-2:] == ["logits", "softmax"]
    assert names[1:4] == ["6 MaxPool2d (in)", "6 MaxPool2d (dense)", "6 MaxPool2d (ds)"]
    assert any("(pooled)" in n for n in names)


def test_named_layers_and_unknown_layer():
    from shiftaudit.errors import UsageError

    model = circular_vgg()
    assert [s.module for s in select_layers(model, "3,6", (16, 16))][1:3] == ["3", "6"]
    with pytest.raises(UsageError, match="no layer named"):
        select_layers(model, "nope", (16, 16))


def _check_png(path, expect_min_side=200):
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape[0] >= expect_min_side and img.shape[1] >= expect_min_side
    assert img.std() > 10  # not blank


@pytest.mark.slow
def test_heatmap_png_for_a_small_vgg_at_32(tmp_path):
    torch.manual_seed(1)
    model = circular_vgg(channels=(8, 8, 8, 8, 8))
    x = torch.randn(2, 3, 32, 32)
    layers = audit(model, x, device="cpu", layers="auto", max_shift=8).metrics["layers"]
    out = plot_layer_heatmaps(layers, tmp_path / "layers.png")
    _check_png(out)
    zero_i, zero_j = layers["dh"].index(0), layers["dw"].index(0)
    for layer in layers["layers"]:
        grid = np.array(layer["equivariance"]["map"], dtype=float)
        assert grid[zero_i, zero_j] == pytest.approx(grid.min(), abs=1e-6)  # the zero-shift pixel is the minimum
    assert len(layers["dh"]) == 17


@pytest.mark.slow
def test_heatmap_png_for_resnet18_at_64(tmp_path):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4).eval()
    x = torch.randn(2, 3, 64, 64)
    layers = audit(model, x, device="cpu", layers="auto", max_shift=3).metrics["layers"]
    names = [layer["name"] for layer in layers["layers"]]
    assert "conv1 (ds)" in names and "maxpool (dense)" in names and "layer4.0.downsample.0 Conv2d (ds)" in names
    assert "conv1 (in)" not in names  # the stem's input is the pixels, measured once
    out = plot_layer_heatmaps(layers, tmp_path / "resnet.png")
    _check_png(out)
    zero_i, zero_j = layers["dh"].index(0), layers["dw"].index(0)
    for layer in layers["layers"]:
        grid = np.array(layer["equivariance"]["map"], dtype=float)
        assert grid[zero_i, zero_j] == pytest.approx(0.0, abs=1e-5)


@pytest.mark.slow
def test_blurpool_patched_stack_has_lower_distances_at_the_same_layers():
    """Fig. 4 (b) vs (a): with MaxBlurPool, features stay closer to equivariant after each downsampling."""
    from shiftaudit.antialias import patch

    torch.manual_seed(0)
    model = circular_vgg().double()
    patched = patch(model, filter="binomial5", pad="circular").double().eval()
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    # the same feature maps in both: the output of every conv stage's ReLU, and the logits
    names = ["5", "11", "17"]
    base = audit(model, x, device="cpu", layers=names).metrics["layers"]["layers"]
    blur = audit(patched, x, device="cpu", layers=names).metrics["layers"]["layers"]

    def mean_eq(layers, name):
        layer = next(lay for lay in layers if lay["name"].startswith(name))
        return float(np.mean(np.array(layer["equivariance"]["map"], dtype=float)))

    for name in ("11", "17", "logits"):  # after the first and second downsampling, and the output
        assert mean_eq(blur, name) < mean_eq(base, name), name
    assert mean_eq(blur, "5") == pytest.approx(0.0, abs=1e-9) and mean_eq(base, "5") == pytest.approx(0.0, abs=1e-9)


def test_table_and_heatmap_share_one_scale_and_the_html_has_the_table(vgg_layers, tmp_path, monkeypatch):
    """The table's relative column is the heatmap's colour value (red = 1 = half the reference, Fig. 4)."""
    import shiftaudit.report.heatmaps as heatmaps
    from shiftaudit.report.html import render_html
    from shiftaudit.report.rows import layer_rows
    from tests.helpers import synthetic_result

    drawn = {}

    def keep(fig, path):  # read the colour values each panel was drawn with
        drawn.update({ax.get_title(): np.ma.filled(ax.images[0].get_array(), np.nan) for ax in fig.axes if ax.images})
        return path

    monkeypatch.setattr(heatmaps, "save_png", keep)
    plot_layer_heatmaps(vgg_layers, tmp_path / "layers.png")
    rows = {row[0]: row for row in layer_rows(vgg_layers)}
    for layer in vgg_layers["layers"]:
        h, w = layer["resolution"]
        panel = drawn[f"{layer['name']} [{h}]" if h == w else f"{layer['name']} [{h}x{w}]"]
        assert float(rows[layer["name"]][4]) == pytest.approx(float(np.nanmean(panel)), abs=6e-4), layer["name"]
        eq, ref = layer["equivariance"]["mean"], layer["reference_distance"]
        assert float(rows[layer["name"]][4]) == pytest.approx(eq / (ref / 2), abs=6e-4)
    result = synthetic_result()
    result.metrics["layers"] = vgg_layers
    page = render_html(result)
    assert "<h2>Per-layer distances</h2>" in page and "Equiv. / (ref/2)" in page
    assert all(f"<td>{row[0]}</td>" in page for row in layer_rows(vgg_layers))
