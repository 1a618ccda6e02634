"""`inspect` on real torchvision checkpoints, with and without --arch (identified from the weights)."""

from __future__ import annotations

import json
import textwrap
import uuid

import pytest
import torch
import torchvision
from typer.testing import CliRunner

from shiftaudit.cli import app
from tests.helpers import inspect_json

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


AA_SOURCE = '''
import torch
import torch.nn.functional as F
from torch import nn


class Downsample(nn.Module):
    """antialiased-cnns' BlurPool (its old class name): a fixed filter buffer, a padding child, a strided depthwise conv."""

    def __init__(self, channels, filt_size=3, stride=2):
        super().__init__()
        a = torch.tensor([1.0, 2.0, 1.0])
        filt = a[:, None] * a[None, :]
        self.register_buffer("filt", (filt / filt.sum())[None, None].repeat(channels, 1, 1, 1))
        self.pad = nn.ReflectionPad2d(1)
        self.stride = stride
        self.channels = channels

    def forward(self, x):
        return F.conv2d(self.pad(x), self.filt, stride=self.stride, groups=self.channels)


class Net(nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.maxpool = nn.Sequential(nn.MaxPool2d(2, stride=1), Downsample(8))
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.down = Downsample(16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.maxpool(self.conv1(x).relu())
        x = self.down(self.conv2(x).relu())
        return self.fc(self.pool(x).flatten(1))


def make(num_classes=3):
    return Net(num_classes)
'''


def main_path_product(points):
    product = 1
    for p in points:
        if p["role"] not in ("global", "squeeze", "shortcut"):
            product *= p["stride"][0]
    return product


def test_inspect_lists_shiftaudit_blurpools_of_a_patched_resnet18(tmp_path):
    ckpt, out = tmp_path / "r18.pt", tmp_path / "r18_aa.safetensors"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), ckpt)
    res = runner.invoke(app, ["patch", str(ckpt), "--arch", "resnet18", "-o", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    rep = inspect_json(out, "--size", "64")["inspection"]
    blurs = [p for p in rep["points"] if p["kind"] == "blurpool"]
    assert {p["name"] for p in blurs} >= {"maxpool.blur", "layer2.0.conv1_blur", "layer2.0.downsample.0.blur"}
    assert {p["role"] for p in blurs if "downsample" in p["name"]} == {"shortcut"}
    assert rep["total_stride"] == 32 == main_path_product(rep["points"]) == rep["main_path_stride"]
    res = runner.invoke(app, ["inspect", str(out), "--size", "64"])
    assert res.exit_code == 0 and "total stride 32" in res.stdout and "BlurPool2d" in res.stdout
    assert "multiply to" not in res.stdout


def test_inspect_lists_antialiased_cnns_style_blurpools(tmp_path, monkeypatch):
    name = f"aa_models_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(AA_SOURCE))
    monkeypatch.chdir(tmp_path)
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, tmp_path / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ckpt = tmp_path / "aa.pt"
    torch.save(mod.make().state_dict(), ckpt)  # holds maxpool.1.filt and down.filt
    rep = inspect_json(ckpt, "--arch", f"{name}:make")["inspection"]
    listed = {p["name"]: p for p in rep["points"] if p["role"] != "global"}
    assert set(listed) == {"maxpool.1", "down"} and {p["kind"] for p in listed.values()} == {"blurpool"}
    assert listed["down"]["kernel"] == [3, 3] and listed["down"]["stride"] == [2, 2]
    assert rep["total_stride"] == 4 == main_path_product(rep["points"]) == rep["main_path_stride"]
