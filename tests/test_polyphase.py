"""The polyphase (shift-and-stitch) engine equals the naive loop of torch.roll + forward, shift by shift."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from shiftaudit.antialias.blurpool import BlurPool2d
from shiftaudit.engine.polyphase import PolyphaseUnsupported, build_polyphase
from shiftaudit.engine.runner import audit
from shiftaudit.models import vgg13_cifar
from shiftaudit.shifts.sets import ShiftSet
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
        self.main = nn.Sequential(
            nn.Conv2d(6, 8, 3, stride=2, padding=1, padding_mode="circular"),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, padding_mode="circular"),
        )
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
        (
            lambda: nn.Sequential(
                nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular"),
                nn.MaxPool2d(3, 2, 1),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
            ),
            12,
            "padded",
        ),
        (lambda: tiny_cnn(padding_mode="circular"), 10, "size"),
        (
            lambda: nn.Sequential(
                nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular"),
                nn.Upsample(scale_factor=2),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
            ),
            8,
            "Upsample",
        ),
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


# -- models patched by shiftaudit.antialias with circular blur padding ------------------------------------------------
def _vgg_stack(spatial_head: bool = False, size: tuple[int, int] = (16, 16)) -> nn.Module:
    """conv-BN-ReLU, MaxPool(2), a strided conv straight into a conv (so the patch wraps it as ConvThenBlur2d),
    ReLU, MaxPool(2), then a global-pool or flatten head."""

    def conv(c_in, c_out, stride=1):
        return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, padding_mode="circular")

    layers = [
        conv(3, 6),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.MaxPool2d(2),
        conv(6, 8, stride=2),
        conv(8, 8),
        nn.ReLU(),
        nn.MaxPool2d(2),
    ]
    if spatial_head:
        layers += [nn.Flatten(), nn.Linear(8 * (size[0] // 8) * (size[1] // 8), 5)]
    else:
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)]
    return nn.Sequential(*layers)


class ResBlockNet(nn.Module):
    """A zero-padded stem and a residual block with a strided 3x3 conv (BN, ReLU after it) and a strided 1x1 shortcut."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.conv1 = nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.short = nn.Conv2d(6, 8, 1, stride=2, bias=False)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        x = torch.relu(y + self.short(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _patched(name: str) -> tuple[nn.Module, tuple[int, int]]:
    from shiftaudit.antialias import patch

    if name == "vgg-tri3":
        return patch(randomise(_vgg_stack()), filter="tri3", pad="circular"), (16, 16)
    if name == "vgg-binomial4-flatten":
        return patch(randomise(_vgg_stack(True, (16, 24))), filter="binomial4", pad="circular"), (16, 24)
    if name == "vgg-rect2":
        return patch(randomise(_vgg_stack()), filter="rect2", pad="circular"), (16, 16)
    if name == "resnet-block":
        return patch(randomise(ResBlockNet()), circular_conv=True, pad="circular"), (16, 16)
    raise KeyError(name)


@pytest.mark.parametrize(
    "name", ["vgg-tri3", pytest.param("vgg-binomial4-flatten", marks=pytest.mark.slow), "vgg-rect2", "resnet-block"]
)
def test_circularly_blurred_models_equal_the_naive_roll_loop(name):
    from torch import fx

    from shiftaudit.antialias import BlurThenConv2d, ConvThenBlur2d, PoolBlur2d

    torch.manual_seed(0)
    model, size = _patched(name)
    kinds = {type(m) for m in model.modules()}
    if name.startswith("vgg"):
        assert {PoolBlur2d, ConvThenBlur2d} <= kinds and all(m.circular for m in model.modules() if isinstance(m, PoolBlur2d))
    else:  # the graph form: the blur after the strided conv's BN + ReLU, a blur before the 1x1 shortcut
        assert isinstance(model, fx.GraphModule) and BlurThenConv2d in kinds and BlurPool2d in kinds
    model = model.eval().double()
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    shifts = ShiftSet.all_shifts(size)
    ks, ref = naive_logits(model, x, shifts)
    got = poly_logits(model, x, shifts)
    assert float((ref - ref[:, :1]).abs().max()) > 1e-3  # the outputs do depend on the shift
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    # float32 as well, on one image
    model = model.float()
    ks, ref = naive_logits(model, x[:1].float(), shifts, every=7)
    got = poly_logits(model, x[:1].float(), shifts)[:, ks]
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_polyphase_leaves_the_patched_model_alone():
    model, size = _patched("vgg-tri3")
    before = {n: type(m) for n, m in model.named_modules()}
    keys = set(model.state_dict())
    shifts = ShiftSet.all_shifts(size)
    build_polyphase(model.eval(), torch.randn(1, 3, *size), shifts.dh, shifts.dw)
    assert {n: type(m) for n, m in model.named_modules()} == before and set(model.state_dict()) == keys


@pytest.mark.parametrize(
    "kwargs, why",
    [
        (dict(method="aps"), "APSDown2d"),
        (dict(filter="tri3", pad="reflect"), "PoolBlur2d pools without wrapping|reflect"),
        (dict(filter="tri3", pad="reflect", circular_conv=True), "reflect"),
    ],
)
def test_patched_models_it_cannot_handle_are_refused(kwargs, why):
    from shiftaudit.antialias import patch

    model = patch(randomise(_vgg_stack()), **kwargs).eval()
    shifts = ShiftSet.all_shifts((16, 16))
    with pytest.raises(PolyphaseUnsupported, match=why):
        build_polyphase(model, torch.randn(1, 3, 16, 16), shifts.dh, shifts.dw)


def _assert_close_json(a, b, path=""):
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for k in a:
            _assert_close_json(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b)):
            _assert_close_json(u, v, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-7), path
    else:
        assert a == b, path


@pytest.mark.slow  # 4 audits of 1,024 shifts (~20 s); circularly blurred models against the naive loop are the fast check
def test_antialiased_demo_model_uses_polyphase_and_gives_the_same_report(one_thread):
    """The packaged anti-aliased demo (circular convs, MaxPool(2) -> PoolBlur2d(circular, tri3)) runs in polyphase
    form. In double precision the report is identical to the dense engine's; in float32 (the default) the
    probabilities differ in the last bits (conv blocking differs between the two layouts, as for the unpatched demo),
    so there every count and prediction is equal and every float agrees to 1e-5."""
    from shiftaudit.cli.demo_cmd import demo_dataset
    from shiftaudit.loading import load_model
    from shiftaudit.models.demo import demo_aa_checkpoint_path

    shifts = ShiftSet.all_shifts((32, 32))
    aa = load_model(demo_aa_checkpoint_path())
    ds = demo_dataset(4, aa.preprocessing)
    poly = audit(aa, ds, shifts=shifts, device="cpu")
    dense = audit(aa, ds, shifts=shifts, device="cpu", polyphase=False)
    assert poly.settings["engine"] == "polyphase" and dense.settings["engine"] == "dense"
    _assert_close_json(json.loads(_json(poly)), json.loads(_json(dense)))

    aa64 = load_model(demo_aa_checkpoint_path())
    aa64.model.double()
    poly = audit(aa64, ds, shifts=shifts, device="cpu")
    dense = audit(aa64, ds, shifts=shifts, device="cpu", polyphase=False)
    assert poly.settings["engine"] == "polyphase" and dense.settings["engine"] == "dense"
    assert _json(poly) == _json(dense)
