"""Patching: the paper's 1-D example, weights kept by name, exact equivalences and invariances, every torchvision model."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from shiftaudit.antialias import (
    PatchConfig,
    apply_patch_spec,
    conv_total_variation,
    filter_total_variation,
    patch,
    patch_model,
    plan_patch,
    recalibrate_batchnorm,
)
from shiftaudit.antialias.blurpool import BlurPool2d
from shiftaudit.antialias.modules import PoolBlur2d
from shiftaudit.errors import UsageError

from .helpers import tiny_cnn

SIGNAL = torch.tensor([0.0, 0, 1, 1, 0, 0, 1, 1]).view(1, 1, 1, 8)


def dense_circular_maxpool2(x: torch.Tensor) -> torch.Tensor:
    """MaxPool(k=2, s=1) with circular padding: the paper's Fig. 3 intermediate signal."""
    return F.max_pool2d(F.pad(x, (0, 1, 0, 0), mode="circular"), (1, 2), stride=1)


def test_paper_fig3_maxpool_breaks_equivariance():
    pool = nn.MaxPool2d((1, 2), stride=(1, 2))
    assert pool(SIGNAL).flatten().tolist() == [0, 1, 0, 1]
    assert pool(torch.roll(SIGNAL, 1, -1)).flatten().tolist() == [1, 1, 1, 1]


def test_paper_fig3_maxblurpool_values():
    blur = BlurPool2d(filt="tri3", stride=2, pad_mode="circular")
    out = blur(dense_circular_maxpool2(SIGNAL)).flatten()
    out_shifted = blur(dense_circular_maxpool2(torch.roll(SIGNAL, 1, -1))).flatten()
    assert torch.allclose(out, torch.tensor([0.5, 1, 0.5, 1]))
    assert torch.allclose(out_shifted, torch.tensor([0.75, 0.75, 0.75, 0.75]))


def test_resnet18_plan_and_placement():
    model = torchvision.models.resnet18(num_classes=4)
    steps = {s.name: s for s in plan_patch(model)}
    assert not steps["conv1"].patched and "stem" in steps["conv1"].reason
    assert steps["maxpool"].patched and steps["layer2.0.downsample.0"].kind == "shortcut"
    result = patch_model(model, PatchConfig(filter="binomial5"))
    by_name = {s.name: s for s in result.steps}
    # ConvBlurPool: the blur sits after the block's BatchNorm and ReLU, not right after the conv
    assert by_name["layer2.0.conv1"].placed_after == "layer2.0.relu"
    assert result.mode == "graph"
    assert isinstance(result.model.get_submodule("maxpool"), PoolBlur2d)
    assert result.model.get_submodule("layer2.0.conv1").stride == (1, 1)
    assert model.get_submodule("layer2.0.conv1").stride == (2, 2), "the input model must be left untouched"


@pytest.mark.parametrize(
    "factory",
    [
        lambda: torchvision.models.resnet18(num_classes=4),
        lambda: torchvision.models.mobilenet_v3_small(num_classes=4),
        lambda: torchvision.models.densenet121(num_classes=4),
        lambda: tiny_cnn(),
    ],
    ids=["resnet18", "mobilenet_v3_small", "densenet121", "tiny_cnn"],
)
def test_delta_filter_patch_is_the_identity(factory):
    """Blur with the delta filter + subsample at phase 0 is exactly the strided layer: placement and sizes are right."""
    torch.manual_seed(0)
    model = factory().eval()
    patched = patch(model, filter="delta", stem=True)
    x = torch.randn(2, 3, 40, 40)
    torch.testing.assert_close(patched(x), model(x), rtol=0, atol=1e-5)


def test_original_weights_load_by_name_strict_and_output_differs():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4).eval()
    patched = patch(model)
    patched.load_state_dict(model.state_dict(), strict=True)
    assert set(patched.state_dict()) == set(model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    assert patched(x).shape == model(x).shape
    assert not torch.allclose(patched(x), model(x))


def test_ceil_mode_pool_keeps_its_output_size_and_delta_is_exact():
    pool = nn.Sequential(nn.MaxPool2d(3, 2, ceil_mode=True))
    patched = patch(pool, filter="delta")
    for n in (8, 9, 10, 11, 112):
        x = torch.randn(1, 2, n, n)
        torch.testing.assert_close(patched(x), pool(x))


def test_even_filters_do_not_add_a_row():
    model = torchvision.models.resnet18(num_classes=3).eval()
    x = torch.randn(1, 3, 64, 64)  # the row count is the same at any size: 64 keeps six resnet18 passes cheap
    for filt in ("rect2", "binomial4", "window6"):
        patched = patch(model, filter=filt, stem=True)
        assert patched(x).shape == (1, 3)
        # 64 -> 32 at the stem, 16 after the pool, as before
        feats = {}
        patched.get_submodule("maxpool").register_forward_hook(lambda m, i, o, feats=feats: feats.update(pool=o.shape))
        patched(x)
        assert feats["pool"][-2:] == (16, 16)


def test_circular_patched_model_is_exactly_invariant_to_multiples_of_its_stride():
    torch.manual_seed(0)
    model = tiny_cnn(padding_mode="zeros").eval()  # two stride-2 pools: total stride 4
    patched = patch(model, pad="circular", circular_conv=True, filter="binomial5")
    x = torch.randn(3, 3, 16, 16)
    y = patched(x)
    for dh, dw in [(4, 0), (0, 8), (12, 4)]:
        torch.testing.assert_close(patched(torch.roll(x, (dh, dw), (-2, -1))), y, rtol=0, atol=1e-5)
    assert not torch.allclose(patched(torch.roll(x, (1, 0), (-2, -1))), y, atol=1e-4)


def test_blur_makes_odd_shifts_closer():
    """The point of the patch: a one-pixel shift moves the output less than without the blur."""
    torch.manual_seed(0)
    model = tiny_cnn(padding_mode="circular", spatial_head=True, size=16).eval()
    patched = patch(model, pad="circular", filter="binomial5")
    x = torch.randn(16, 3, 16, 16)
    xs = torch.roll(x, (1, 1), (-2, -1))
    change = (model(xs) - model(x)).norm() / model(x).norm()
    change_patched = (patched(xs) - patched(x)).norm() / patched(x).norm()
    assert change_patched < change


def test_spec_round_trip_rebuilds_the_same_model():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4).eval()
    result = patch_model(model, PatchConfig(filter="tri5", pad="zero", skip=("layer4",)))
    assert "layer4.0.conv1" not in result.spec["patched"]
    rebuilt = apply_patch_spec(torchvision.models.resnet18(num_classes=4), result.spec)
    rebuilt.load_state_dict(result.model.state_dict(), strict=True)
    rebuilt.eval()
    x = torch.randn(2, 3, 48, 48)
    torch.testing.assert_close(rebuilt(x), result.model(x))


def test_spec_for_another_architecture_is_refused():
    result = patch_model(torchvision.models.resnet18(num_classes=4))
    with pytest.raises(UsageError, match="does not fit"):
        apply_patch_spec(torchvision.models.mobilenet_v3_small(num_classes=4), result.spec)  # not vgg11: 133 M weights to draw


def test_policy_options():
    model = torchvision.models.resnet18(num_classes=4)
    names = lambda cfg: {s.name for s in plan_patch(model, config=cfg) if s.patched}  # noqa: E731
    assert "conv1" in names(PatchConfig(stem=True))
    assert not any("downsample" in n for n in names(PatchConfig(shortcuts=False)))
    assert names(PatchConfig(only=("layer3",))) == {"layer3.0.conv1", "layer3.0.downsample.0"}
    with pytest.raises(UsageError, match="layer3"):
        plan_patch(model, config=PatchConfig(only=("layr3",)))
    with pytest.raises(UsageError, match="binomial5"):
        PatchConfig(filter="binomal5")


class _Untraceable(nn.Module):
    """Control flow on tensor values: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv0(x)
        if x.sum() > 0:
            x = x * 1.0
        return torch.relu(self.bn(self.conv(x)))


def test_untraceable_model_falls_back_to_module_replacement():
    torch.manual_seed(0)
    model = _Untraceable().eval()
    result = patch_model(model, PatchConfig(filter="delta"))
    assert result.mode == "modules" and any("traced" in n for n in result.notes)
    x = torch.randn(1, 3, 10, 10)
    torch.testing.assert_close(result.model(x), model(x))
    result.model.load_state_dict(model.state_dict(), strict=True)


def test_recalibration_re_estimates_batchnorm_statistics():
    from shiftaudit.data import load_data

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 3, 1, bias=False), nn.BatchNorm2d(3)).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(3).view(3, 3, 1, 1))
    images = torch.randn(64, 3, 8, 8) * 2 + torch.tensor([1.0, -2.0, 3.0]).view(1, 3, 1, 1)
    data = load_data((images, torch.zeros(64, dtype=torch.long)), raw=True)
    rec = recalibrate_batchnorm(model, data, num_images=64, batch_size=16, layers="all")
    assert rec.images == 64 and rec.layers == ["1"] and not model.training
    torch.testing.assert_close(model[1].running_mean, images.mean(dim=(0, 2, 3)), rtol=0, atol=1e-4)
    assert model[1].momentum == 0.1


def test_total_variation():
    w = torch.tensor([[0.0, 1.0], [0.0, 0.0]]).view(1, 1, 2, 2)
    assert filter_total_variation(w) == pytest.approx(2.0)
    assert filter_total_variation(torch.ones(2, 3, 3, 3)) == 0.0
    tv = conv_total_variation(torchvision.models.resnet18(num_classes=2))
    assert "conv1" in tv and "layer2.0.downsample.0" not in tv


@pytest.mark.slow
def test_every_torchvision_classifier_patches_with_same_shape_and_weights():
    """Built on the meta device: shapes and state-dict keys propagate without computing anything."""
    failures = []
    for name in torchvision.models.list_models(module=torchvision.models):
        kwargs = {"init_weights": False} if name in ("googlenet", "inception_v3") else {}
        size = 299 if name == "inception_v3" else 224
        try:
            with torch.device("meta"):
                model = torchvision.models.get_model(name, weights=None, num_classes=5, **kwargs).eval()
        except NotImplementedError:  # RegNet initialisation copies data: build the smallest for real instead
            if name != "regnet_x_400mf":
                continue
            model = torchvision.models.get_model(name, weights=None, num_classes=5).eval()
        dev = next(model.parameters()).device
        x = torch.empty(1, 3, size, size, device=dev)
        with torch.no_grad():
            want = model(x).shape
            result = patch_model(model, PatchConfig(stem=True))
            got = result.model(x).shape
        same_keys = {k: tuple(v.shape) for k, v in result.model.state_dict().items()} == {
            k: tuple(v.shape) for k, v in model.state_dict().items()
        }
        if got != want or not same_keys:
            failures.append(name)
    assert not failures


def test_timm_models_patch_when_installed():
    timm = pytest.importorskip("timm")
    for name in ("resnet18", "efficientnet_b0", "convnext_atto", "regnety_002"):
        model = timm.create_model(name, pretrained=False, num_classes=3).eval()
        result = patch_model(model, PatchConfig(filter="delta", stem=True))
        x = torch.randn(1, 3, 64, 64)
        torch.testing.assert_close(result.model(x), model(x), rtol=0, atol=1e-5)
        result.model.load_state_dict(copy.deepcopy(model.state_dict()), strict=True)


def test_a_blur_before_a_conv_called_by_keyword_blurs_its_input():
    """A conv subclass with its own forward keeps its class and gets a pre-hook blur; the hook must see the input
    whether it comes by position or by keyword."""
    from shiftaudit.antialias.rewrite import _blur_input

    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 1)
    conv.blur = BlurPool2d(2, stride=2)
    conv.register_forward_pre_hook(_blur_input, with_kwargs=True)
    x = torch.randn(1, 2, 8, 8)
    expected = F.conv2d(conv.blur(x), conv.weight, conv.bias)
    assert torch.equal(conv(x), expected) and torch.equal(conv(input=x), expected)
    assert _blur_input(conv, (), {"flag": True}) == ((), {"flag": True})  # no tensor: left alone
