"""Per-layer distances against a naive loop: every image, every shift, features from a plain forward hook, nearest
upsampled to the input size, rolled with torch.roll, compared with a cosine written out here.

The property tests in test_layers.py (exact equivariance before any downsampling, modulo 2^k after k steps) hold for
many wrong implementations; this one pins the numbers of each measured layer, each hook position (module input,
output, dense pool, logits, softmax), the reference distance and the chunking across device batches.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shiftaudit.engine.runner import audit
from shiftaudit.metrics.layers import FeatureDistance, LayerSpec
from shiftaudit.shifts.sets import ShiftSet
from tests.helpers import tiny_cnn

EPS = 1e-12


def _cos_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over locations of 1 - cos between channel vectors; two zero vectors are identical, a zero vector and a
    non-zero one maximally different (distance 1)."""
    a, b = a.double(), b.double()
    na, nb = a.norm(dim=0), b.norm(dim=0)
    cos = (a * b).sum(0) / (na * nb).clamp_min(EPS)
    za, zb = na <= 1e-12, nb <= 1e-12
    cos = torch.where(za & zb, torch.ones_like(cos), torch.where(za | zb, torch.zeros_like(cos), cos))
    return float((1 - cos).mean().clamp_min(0))


def _features(model, x, specs):
    """Each spec's feature map for one input batch, from hooks on a plain forward."""
    got = {}
    modules = dict(model.named_modules())
    hooks = []
    for spec in specs:
        if spec.module in ("", "<logits>", "<softmax>"):
            continue

        def hook(mod, inputs, output, spec=spec):
            if spec.where == "input":
                got[spec.name] = inputs[0]
            elif spec.where == "dense":
                k = mod.kernel_size  # window i covers i .. i+k-1, wrapping around the border
                got[spec.name] = torch.stack(
                    [torch.roll(inputs[0], (-a, -b), (-2, -1)) for a in range(k) for b in range(k)]
                ).amax(0)
            else:
                got[spec.name] = output

        hooks.append(modules[spec.module].register_forward_hook(hook))
    with torch.no_grad():
        logits = model(x)
    for h in hooks:
        h.remove()
    for spec in specs:
        if spec.module == "":
            got[spec.name] = x
        elif spec.module == "<logits>":
            got[spec.name] = logits
        elif spec.module == "<softmax>":
            got[spec.name] = torch.softmax(logits, 1)
    return {k: (v[:, :, None, None] if v.ndim == 2 else v) for k, v in got.items()}


def _up(f: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(f, size=size, mode="nearest")


@pytest.mark.parametrize(
    ("images", "batch", "size"),
    [
        (5, 10, (16, 16)),  # device batches of 10 rows cut through an image's 49 shifts: the zero-shift store carries over
        (5, 1000, (16, 16)),
        (1, 7, (16, 16)),
        (3, 10, (16, 15)),  # a 15-px width pools to 7: maps that do not divide the input
    ],
)
def test_every_layer_every_shift_equals_the_naive_loop(images, batch, size):
    torch.manual_seed(0)
    model = tiny_cnn(num_classes=3, padding_mode="circular", size=16).eval()
    x = torch.randn(5, 3, *size)
    x[2, :, :4] = 0.0  # zero channel vectors in the input: the indicator case
    x = x[:images]  # one image: each shift's distance is that image's, and there is no second image to refer to
    shifts = ShiftSet.window(size, 3)
    specs = [
        LayerSpec("pixels", "", "input"),
        LayerSpec("relu1", "1", "output"),
        LayerSpec("pool1 input", "2", "input"),
        LayerSpec("pool1 dense", "2", "dense"),
        LayerSpec("pool1", "2", "output"),
        LayerSpec("pool2", "5", "output"),
        LayerSpec("logits", "<logits>", "output"),
        LayerSpec("softmax", "<softmax>", "output"),
    ]
    result = audit(model, x, shifts=shifts, device="cpu", batch_size=batch, observers=[FeatureDistance(specs, shifts)])
    layers = {entry["name"]: entry for entry in result.metrics["layers"]["layers"]}
    assert list(layers) == [s.name for s in specs]

    zero = _features(model, x, specs)
    offsets = zip(shifts.dh.tolist(), shifts.dw.tolist())
    moved_all = [_features(model, torch.roll(x, (dh, dw), (-2, -1)), specs) for dh, dw in offsets]
    for spec in specs:
        eq = np.zeros(len(shifts))
        inv = np.zeros(len(shifts))
        for k, (dh, dw) in enumerate(zip(shifts.dh.tolist(), shifts.dw.tolist())):
            moved = moved_all[k][spec.name]
            for i in range(x.shape[0]):
                f0, f1 = zero[spec.name][i : i + 1], moved[i : i + 1]
                eq[k] += _cos_distance(torch.roll(_up(f0, size), (dh, dw), (-2, -1))[0], _up(f1, size)[0])
                inv[k] += _cos_distance(f0[0], f1[0])
        eq, inv = eq / x.shape[0], inv / x.shape[0]
        got = layers[spec.name]
        assert got["module"] == spec.module and got["where"] == spec.where
        assert got["resolution"] == list(zero[spec.name].shape[-2:])
        assert got["channels"] == zero[spec.name].shape[1]
        if images > 1:
            ref = np.mean([_cos_distance(zero[spec.name][i - 1], zero[spec.name][i]) for i in range(1, images)])
            assert got["reference_distance"] == pytest.approx(ref, abs=2e-6)
        else:
            assert math.isnan(got["reference_distance"])
        assert got["equivariance"]["mean"] == pytest.approx(eq.mean(), abs=2e-6)
        assert got["equivariance"]["max"] == pytest.approx(eq.max(), abs=2e-6)
        assert got["invariance"]["mean"] == pytest.approx(inv.mean(), abs=2e-6)
        assert got["invariance"]["max"] == pytest.approx(inv.max(), abs=2e-6)
        grid = {(int(a), int(b)): k for k, (a, b) in enumerate(zip(shifts.dh, shifts.dw))}
        for r, dh in enumerate(result.metrics["layers"]["dh"]):
            for c, dw in enumerate(result.metrics["layers"]["dw"]):
                assert got["equivariance"]["map"][r][c] == pytest.approx(eq[grid[(dh, dw)]], abs=2e-6)
                assert got["invariance"]["map"][r][c] == pytest.approx(inv[grid[(dh, dw)]], abs=2e-6)
    # circular convs before any pooling: exactly equivariant; the logits of a global-average net: invariant
    # only modulo the total stride
    assert layers["relu1"]["exact_modulo"] == 1 and layers["pixels"]["exact_modulo"] == 1
    if size == (16, 16):
        assert layers["pool1"]["exact_modulo"] == 2


def test_an_anisotropic_pool_a_layer_never_called_and_no_layers_at_all():
    from torch import nn

    from shiftaudit.errors import UsageError

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular"),
                nn.MaxPool2d((2, 1)),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(4, 3),
            )
            self.unused = nn.Conv2d(4, 4, 1)  # never called by forward: nothing to measure, and the rest stays

        def forward(self, x):
            return self.body(x)

    torch.manual_seed(0)
    model = Net().eval()
    shifts = ShiftSet.window((16, 16), 1)
    specs = [
        LayerSpec("unused", "unused", "output"),
        LayerSpec("pool", "body.1", "output"),
        LayerSpec("logits", "<logits>", "output"),
    ]
    result = audit(model, torch.randn(3, 3, 16, 16), shifts=shifts, device="cpu", observers=[FeatureDistance(specs, shifts)])
    layers = result.metrics["layers"]["layers"]
    assert [(e["name"], e["resolution"], e["stride"]) for e in layers] == [("pool", [8, 16], 2), ("logits", [1, 1], 16)]
    with pytest.raises(UsageError, match=r"^No layers to measure\.$"):
        FeatureDistance([], shifts)
