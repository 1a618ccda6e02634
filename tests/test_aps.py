"""Adaptive polyphase sampling: exact shift invariance with circular padding, phases shared with shortcuts."""

from __future__ import annotations

import pytest
import torch
import torchvision
from typer.testing import CliRunner

from shiftaudit.antialias import PatchConfig, apply_patch_spec, patch, patch_model
from shiftaudit.antialias.aps import APSDown2d

from .helpers import tiny_cnn


def test_aps_picks_the_phase_of_largest_norm():
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 1::2, 0::2] = 3.0  # phase (1, 0) holds all the energy
    out = APSDown2d(stride=2)(x)
    assert out.shape == (1, 1, 2, 2) and torch.all(out == 3.0)


def test_aps_layer_is_equivariant_to_every_shift():
    torch.manual_seed(0)
    layer = APSDown2d(stride=2)
    x = torch.randn(3, 4, 8, 8)
    y = layer(x)
    for dh, dw in [(1, 0), (0, 1), (1, 1), (3, 6)]:
        ys = layer(torch.roll(x, (dh, dw), (-2, -1)))
        # the kept component is the same one, circularly shifted on the coarse grid: same multiset of values
        torch.testing.assert_close(ys.flatten(1).sort().values, y.flatten(1).sort().values)


def test_shortcut_follows_its_blocks_phase():
    model = torchvision.models.resnet18(num_classes=3)
    patched = patch(model, method="aps", stem=True, circular_conv=True)
    follower = patched.get_submodule("layer3.0.downsample.0").blur
    assert isinstance(follower, APSDown2d) and follower.leader is patched.get_submodule("layer3.0.conv1_blur")


@pytest.mark.slow
@pytest.mark.parametrize("size", [32, 64])  # exact when the size is a multiple of the total stride (32)
def test_aps_resnet18_with_circular_padding_is_exactly_invariant(size):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    patched = patch(model, method="aps", stem=True, circular_conv=True).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        y = patched(x)
        for dh, dw in [(1, 0), (0, 1), (1, 1), (5, 3), (size - 1, 2), (size // 2, size // 2)]:
            torch.testing.assert_close(patched(torch.roll(x, (dh, dw), (-2, -1))), y, rtol=0, atol=1e-4)
        # the baseline is not
        assert not torch.allclose(model(torch.roll(x, (1, 0), (-2, -1))), model(x), atol=1e-3)


def test_aps_resnet18_audits_to_exact_consistency_one():
    from shiftaudit.engine.runner import audit

    torch.manual_seed(0)
    model = patch(torchvision.models.resnet18(num_classes=10), method="aps", stem=True, circular_conv=True).eval()
    images = torch.randn(4, 3, 32, 32)
    result = audit(model, (images, torch.zeros(4, dtype=torch.long)), max_shift=2, device="cpu")
    assert result.consistency_exact == 1.0
    assert result.variation == pytest.approx(0.0, abs=1e-6)


def test_aps_with_blur_and_spec_round_trip():
    torch.manual_seed(0)
    model = tiny_cnn(padding_mode="circular").eval()
    result = patch_model(model, PatchConfig(method="aps", filter="tri3", pad="circular"))
    assert result.spec["method"] == "aps" and result.spec["filter"] == "tri3"
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(result.model(torch.roll(x, (1, 3), (-2, -1))), result.model(x), rtol=0, atol=1e-5)
    rebuilt = apply_patch_spec(tiny_cnn(padding_mode="circular"), result.spec)
    rebuilt.load_state_dict(result.model.state_dict(), strict=True)
    torch.testing.assert_close(rebuilt.eval()(x), result.model(x))


def test_cli_patch_method_aps(tmp_path):
    from shiftaudit.cli import app

    ckpt = tmp_path / "r.pt"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), ckpt)
    out = tmp_path / "aps.safetensors"
    res = CliRunner().invoke(
        app, ["patch", str(ckpt), "--arch", "resnet18", "--method", "aps", "--stem", "--circular-conv", "-o", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "APS" in res.stdout
    from shiftaudit.loading import load_model

    loaded = load_model(out)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded.model(torch.roll(x, (1, 1), (-2, -1))), loaded.model(x), rtol=0, atol=1e-4)
