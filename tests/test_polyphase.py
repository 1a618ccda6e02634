"""The polyphase (shift-and-stitch) engine equals the naive loop of torch.roll + forward, shift by shift."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from shiftaudit.blurpool import BlurPool2d
from shiftaudit.engine import audit
from shiftaudit.models import vgg13_cifar
from shiftaudit.polyphase import PolyphaseUnsupported, build_polyphase
from shiftaudit.shifts import ShiftSet

from tests.helpers import tiny_cnn


def naive_logits(model: nn.Module, x: torch.Tensor, shifts: ShiftSet, every: int = 1) -> tuple[np.ndarray, torch.Tensor]:
    ks = np.arange(0, len(shifts), every)
    with torch.no_grad():
        out = [model(torch.roll(x, (int(shifts.dh[k]), int(shifts.dw[k])), (-2, -1))) for k in ks]
    return ks, torch.stack(out, 1)  # (N, K', classes)


def poly_logits(model: nn.Module, x: torch.Tensor, shifts: ShiftSet) -> torch.Tensor:
    with torch.no_grad():
        poly = build_polyphase(model, x[:1], shifts.dh, shifts.dw)
        return poly(x).view(x.shape[0], len(shifts), -1)


def randomise(model: nn.Module) -> nn.Module:
    """Kaiming weights and random BN statistics, so outputs really move with the shift."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
    return model.eval()


class TwoBranch(nn.Module):
    """A residual block with a strided main path and a strided 1x1 shortcut, then a stride-(2, 1) conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1, padding_mode="circular")
        self.main = nn.Sequential(nn.Conv2d(6, 8, 3, stride=2, padding=1, padding_mode="circular"), nn.BatchNorm2d(8),
                                  nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, padding_mode="circular"))
        self.short = nn.Conv2d(6, 8, 1, stride=2)
        self.tall = nn.Conv2d(8, 8, 3, stride=(2, 1), padding=1, padding_mode="circular")
        self.blur = BlurPool2d(8, "binomial3", stride=2, pad_mode="circular")
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.main(x) + self.short(x))
        x = self.blur(torch.relu(self.tall(x)))
        return self.head(x.mean((2, 3)))


CASES = {
    "pool-gap": lambda: tiny_cnn(num_classes=4, padding_mode="circular"),
    "pool-flatten-head": lambda: tiny_cnn(num_classes=4, padding_mode="circular", spatial_head=True),
    "two-branch-blur": TwoBranch,
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_shift_equals_the_naive_roll_loop(name):
    torch.manual_seed(0)
    model = randomise(CASES[name]()).double()
    size = (12, 12) if name != "two-branch-blur" else (16, 8)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    shifts = ShiftSet.all_shifts(size)
    ks, ref = naive_logits(model, x, shifts)
    got = poly_logits(model, x, shifts)
    assert float((ref - ref[:, :1]).abs().max()) > 1e-3  # the outputs do depend on the shift
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)


@pytest.fixture
def one_thread():
    """Batch-1 forwards with two OpenMP threads crawl on a busy 2-core box; one thread is steady."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_vgg13_circular_equals_the_naive_loop(one_thread):
    torch.manual_seed(0)
    model = randomise(vgg13_cifar(num_classes=10, circular=True))
    x = torch.randn(1, 3, 32, 32)
    shifts = ShiftSet.all_shifts((32, 32))
    ks, ref = naive_logits(model, x, shifts, every=19)  # 54 of the 1024 shifts, spread over the phases
    got = poly_logits(model, x, shifts)[:, ks]
    assert float((ref - ref[:, :1]).abs().max()) > 1e-3
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize(
    "model, size, why",
    [
        (lambda: tiny_cnn(padding_mode="zeros"), 12, "zeros"),
        (lambda: nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular"), nn.MaxPool2d(3, 2, 1),
                               nn.AdaptiveAvgPool2d(1), nn.Flatten()), 12, "padded"),
        (lambda: tiny_cnn(padding_mode="circular"), 10, "size"),
        (lambda: nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular"), nn.Upsample(scale_factor=2),
                               nn.AdaptiveAvgPool2d(1), nn.Flatten()), 8, "Upsample"),
    ],
)
def test_models_it_cannot_handle_are_refused(model, size, why):
    x = torch.randn(1, 3, size, size)
    shifts = ShiftSet.all_shifts((size, size))
    with pytest.raises(PolyphaseUnsupported, match=why):
        build_polyphase(model().eval(), x, shifts.dh, shifts.dw)


def _json(r):
    d = r.to_json()
    d["settings"].pop("engine")
    d["notes"] = [n for n in d["notes"] if "polyphase" not in n]
    return json.dumps(d)


def test_engine_uses_it_for_all_shift_runs_and_gives_the_same_report():
    torch.manual_seed(1)
    model = randomise(tiny_cnn(num_classes=4, padding_mode="circular", spatial_head=True)).double()
    x = torch.randn(6, 3, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::2] = (y[::2] + 1) % 4
    poly = audit(model, (x, y), device="cpu", batch_size=200)
    dense = audit(model, (x, y), device="cpu", batch_size=200, polyphase=False)
    assert poly.settings["engine"] == "polyphase" and dense.settings["engine"] == "dense"
    assert poly.timing["forward_rows"] == dense.timing["forward_rows"] == 6 * 144
    assert _json(poly) == _json(dense)


def test_fallback_is_noted_when_asked_for_but_not_applicable():
    model = tiny_cnn(num_classes=4).double()
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    r = audit(model, (x, torch.zeros(2, dtype=torch.long)), device="cpu", polyphase=True)
    assert r.settings["engine"] == "dense"
    assert any("polyphase engine not applicable" in n and "zeros" in n for n in r.notes)
    auto = audit(model, (x, torch.zeros(2, dtype=torch.long)), device="cpu")
    assert not any("polyphase" in n for n in auto.notes)  # auto mode falls back silently


def test_layers_fall_back_to_the_dense_engine():
    model = randomise(tiny_cnn(num_classes=4, padding_mode="circular")).double()
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    r = audit(model, (x, torch.zeros(2, dtype=torch.long)), device="cpu", layers="auto")
    assert r.settings["engine"] == "dense" and "layers" in r.metrics
