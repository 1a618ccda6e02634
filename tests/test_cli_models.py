"""`inspect` on real torchvision checkpoints, with and without --arch (identified from the weights)."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from typer.testing import CliRunner

from shiftaudit.cli import app

runner = CliRunner()


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small", pytest.param("densenet121", marks=pytest.mark.slow)])
def test_inspect_with_and_without_arch(arch, tmp_path):
    ckpt = tmp_path / f"{arch}.pth"
    torch.save(torchvision.models.get_model(arch, weights=None, num_classes=7).state_dict(), ckpt)
    for extra in ([], ["--arch", arch]):
        res = runner.invoke(app, ["inspect", str(ckpt), "--size", "64", "--json", "-", *extra])
        assert res.exit_code == 0, res.output
        rep = json.loads(res.stdout)
        assert rep["model"]["arch"] == arch and rep["model"]["num_classes"] == 7
        assert rep["inspection"]["total_stride"] == 32
        assert rep["model"]["arch_source"] == ("--arch" if extra else "identified from weights")


def test_inspect_resnet18_at_224_lists_the_papers_downsampling_points(tmp_path):
    ckpt = tmp_path / "r.pt"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), ckpt)
    res = runner.invoke(app, ["inspect", str(ckpt), "--arch", "resnet18", "--size", "224"])
    assert res.exit_code == 0, res.output
    for name in ("conv1", "maxpool", "layer2.0.conv1", "layer2.0.downsample.0", "layer4.0.downsample.0"):
        assert name in res.stdout
    assert "total stride 32" in res.stdout and "224x224 -> 7x7" in res.stdout
