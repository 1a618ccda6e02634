"""Issue 14 part 3, friction a practitioner hits: builder arguments, Class.method factories, factories in the
current folder, identification that says something useful, BlurPool points in `inspect`, image paths in reports,
figures for unlabelled runs, latency spread. Everything through the real CLI with files made in tmp_path."""

from __future__ import annotations

import json
import textwrap
import uuid

import torch
from typer.testing import CliRunner

from shiftaudit.cli import app

from .helpers import assert_clean_error

runner = CliRunner()

FACTORY_SOURCE = '''
from torch import nn

WIDTHS = {"lite0": 4, "lite1": 6}


class Net(nn.Module):
    def __init__(self, width=4, num_classes=3):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.conv(x).relu()).flatten(1))

    @classmethod
    def build(cls, width=4, num_classes=3):
        return cls(width, num_classes)


def make(model_name, num_classes=3):
    return Net(WIDTHS[model_name], num_classes)
'''


def factory_module(folder):
    """A factory module with a fresh name (so no earlier import is cached), written into ``folder``."""
    name = f"friction_models_{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(textwrap.dedent(FACTORY_SOURCE))
    return name


def net_state(width, num_classes=3):
    torch.manual_seed(0)
    conv, fc = torch.nn.Conv2d(3, width, 3, stride=2, padding=1), torch.nn.Linear(width, num_classes)
    return {"conv.weight": conv.weight.data, "conv.bias": conv.bias.data, "fc.weight": fc.weight.data, "fc.bias": fc.bias.data}


def inspect_json(*args):
    res = runner.invoke(app, ["inspect", *map(str, args), "--size", "32", "--json", "-"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_factory_with_arch_kwargs_in_the_current_folder_and_stored_when_patched(tmp_path, monkeypatch):
    mod = factory_module(tmp_path / "code")
    monkeypatch.chdir(tmp_path / "code")  # no PYTHONPATH: the current folder is importable
    ckpt = tmp_path / "lite1.pt"
    torch.save(net_state(6), ckpt)
    rep = inspect_json(ckpt, "--arch", f"{mod}:make", "--arch-kwargs", '{"model_name": "lite1"}')
    assert rep["model"]["arch"] == f"{mod}:make" and rep["inspection"]["points"][0]["name"] == "conv"
    # without the argument the factory cannot be called: said in one sentence that names the flag giving it
    line = assert_clean_error(runner.invoke(app, ["inspect", str(ckpt), "--arch", f"{mod}:make"]), "model_name")
    assert line == (f"error: Factory {mod}:make needs the argument model_name, which neither the checkpoint nor "
                    """--arch-kwargs gives; pass --arch-kwargs '{"model_name": "..."}' (arch_kwargs= in Python).""")

    out = tmp_path / "patched.safetensors"
    res = runner.invoke(
        app, ["patch", str(ckpt), "--arch", f"{mod}:make", "--arch-kwargs", '{"model_name": "lite1"}', "-o", str(out)]
    )
    assert res.exit_code == 0, res.output
    msg = " ".join(res.stdout.split())
    assert f"--arch {mod}:make" in msg and "importable" in msg and "no other flags" not in msg
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        assert json.loads(f.metadata()["shiftaudit.arch_kwargs"]) == {"model_name": "lite1"}
    # the exact command the message shows rebuilds it: the builder's arguments come from the file
    rep = inspect_json(out, "--arch", f"{mod}:make")
    assert rep["model"]["patch"] is not None and rep["model"]["num_classes"] == 3


def test_class_method_factory(tmp_path, monkeypatch):
    mod = factory_module(tmp_path)
    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "w5.pt"
    torch.save(net_state(5), ckpt)
    rep = inspect_json(ckpt, "--arch", f"{mod}:Net.build", "--arch-kwargs", '{"width": 5}')
    assert rep["model"]["arch"] == f"{mod}:Net.build" and rep["model"]["parameters"] == 3 * 5 * 9 + 5 + 5 * 3 + 3


def test_factory_module_not_found_says_how_to_make_it_importable(tmp_path, monkeypatch):
    mod = factory_module(tmp_path / "code")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    ckpt = tmp_path / "w.pt"
    torch.save(net_state(4), ckpt)
    assert_clean_error(runner.invoke(app, ["inspect", str(ckpt), "--arch", f"{mod}:make"]), mod, "PYTHONPATH", "current folder")


def test_bad_arch_kwargs_are_one_sentence(tmp_path):
    ckpt = tmp_path / "w.pt"
    torch.save(net_state(4), ckpt)
    for bad, needle in (("{model_name: lite0}", "not valid JSON"), ('["lite0"]', "not a list"), ('"lite0"', "not a str"),
                        ('{"num_classes": 3}', "--num-classes")):
        for cmd in ("inspect", "eval", "patch"):
            extra = ["--data", str(tmp_path)] if cmd == "eval" else []
            res = runner.invoke(app, [cmd, str(ckpt), "--arch", "resnet18", "--arch-kwargs", bad, *extra])
            assert_clean_error(res, "--arch-kwargs", needle)


# -- identification --------------------------------------------------------------------------------------------------
import pytest  # noqa: E402
import torchvision  # noqa: E402

from shiftaudit.errors import CheckpointError  # noqa: E402
from shiftaudit.loading import load_model  # noqa: E402


@pytest.fixture
def signature_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SHIFTAUDIT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "shiftaudit-cache"))


@pytest.mark.slow  # a cold search of every torchvision (and timm) signature; the threshold itself has a fast unit test
def test_identification_without_a_useful_candidate_lists_none(tmp_path, signature_cache):
    ckpt = tmp_path / "mine.pt"
    torch.save(net_state(4), ckpt)  # four keys that no known architecture shares
    line = assert_clean_error(runner.invoke(app, ["inspect", str(ckpt)]), "unknown architecture", "pass --arch")
    assert "closest" not in line and "alexnet" not in line and "vgg" not in line


@pytest.mark.slow
def test_identification_names_a_close_candidate(tmp_path, signature_cache):
    sd = torchvision.models.resnet18(num_classes=3).state_dict()
    sd["head.weight"], sd["head.bias"] = sd.pop("fc.weight"), sd.pop("fc.bias")  # a renamed head: still resnet18
    ckpt = tmp_path / "r18_head.pt"
    torch.save(sd, ckpt)
    with pytest.raises(CheckpointError, match=r"closest candidates: resnet18 \(4 keys differ\)"):
        load_model(ckpt)


def antialiased_resnet18_state(filter_size=4):
    """The key layout of antialiased-cnns' resnet18 (BlurPools in Sequentials, each with its ``filt`` buffer), built
    from torchvision's names: no download."""
    sd = torchvision.models.resnet18(num_classes=10).state_dict()
    out = {}
    for key, value in sd.items():
        for layer in ("layer2", "layer3", "layer4"):
            if key.startswith(f"{layer}.0.conv2."):
                key = key.replace(f"{layer}.0.conv2.", f"{layer}.0.conv2.1.")
            elif key.startswith(f"{layer}.0.downsample."):
                i, rest = key[len(f"{layer}.0.downsample."):].split(".", 1)
                key = f"{layer}.0.downsample.{int(i) + 1}.{rest}"
        out[key] = value
    out["maxpool.1.filt"] = torch.ones(64, 1, filter_size, filter_size) / filter_size**2
    for layer, ch, inch in (("layer2", 128, 64), ("layer3", 256, 128), ("layer4", 512, 256)):
        out[f"{layer}.0.conv2.0.filt"] = torch.ones(ch, 1, filter_size, filter_size) / filter_size**2
        out[f"{layer}.0.downsample.0.filt"] = torch.ones(inch, 1, filter_size, filter_size) / filter_size**2
    return out


def test_antialiased_cnns_checkpoint_is_recognised_not_misidentified(tmp_path, signature_cache):
    ckpt = tmp_path / "resnet18_lpf4.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in antialiased_resnet18_state().items()}}, ckpt)
    line = assert_clean_error(runner.invoke(app, ["inspect", str(ckpt)]), "antialiased-cnns", "maxpool.1.filt", "--arch",
                              "filter_size")
    assert "identified" not in line and "closest" not in line
    # told resnet18, the load fails on the extra keys, and the sentence says what the file really is
    assert_clean_error(runner.invoke(app, ["inspect", str(ckpt), "--arch", "resnet18"]), "antialiased-cnns")


# -- inspect: BlurPool-style downsamplers are downsampling points ------------------------------------------------------
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


# -- image paths in the report; figures for unlabelled runs ---------------------------------------------------------
from tests.helpers import assert_real_png, tiny_cnn, write_image_folder, write_images  # noqa: E402

POSITIONAL = ["--arch", "tests.helpers:tiny_cnn", "--arch-kwargs", '{"spatial_head": true, "size": 16}',
              "--preset", "cifar", "--size", "16", "--max-shift", "2", "--device", "cpu", "--quiet"]


def positional_model(path, num_classes=3):
    """A net that classifies the flattened feature map: its predictions move with the image, so shifts flip them."""
    torch.manual_seed(0)
    torch.save(tiny_cnn(num_classes, spatial_head=True, size=16).state_dict(), path)
    return path


def test_json_and_flip_examples_carry_image_paths(tmp_path):
    data = write_image_folder(tmp_path / "photos", classes=3, per_class=4, size=16)
    model = positional_model(tmp_path / "m.pt")
    res = runner.invoke(app, ["eval", str(model), "--data", str(data), *POSITIONAL, "--json", str(tmp_path / "rep.json")])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "rep.json").read_text())
    paths = rep["per_image"]["path"]
    assert len(paths) == len(rep["per_image"]["image_id"]) == 12
    assert sorted(paths) == sorted(f"class_{c}/img_{i}.png" for c in range(3) for i in range(4))
    assert all((data / p).is_file() for p in paths)
    examples = rep["metrics"]["flip_examples"]["examples"]
    assert examples, "the positional net must flip some correctly classified image"
    by_id = dict(zip(rep["per_image"]["image_id"], paths))
    assert all(ex["path"] == by_id[ex["image_id"]] for ex in examples)
    assert "reference" not in rep["metrics"]["flip_examples"]  # labelled: unchanged keys


def test_unlabelled_run_gets_flip_examples_and_a_consistency_histogram(tmp_path):
    write_images(tmp_path / "photos", 6, size=16)
    model = positional_model(tmp_path / "m.pt")
    out = tmp_path / "rep"
    res = runner.invoke(app, ["eval", str(model), "--data", str(tmp_path / "photos"), *POSITIONAL, "--out", str(out)])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["data"]["labelled"] is False and "accuracy" not in rep["metrics"]
    flips = rep["metrics"]["flip_examples"]
    assert flips["reference"] == "zero-shift prediction" and flips["examples"]
    zero = (flips["dh"].index(0), flips["dw"].index(0))
    for ex in flips["examples"]:
        assert ex["path"].startswith("img_") and ex["p_correct"][zero[0]][zero[1]] == 1.0  # agrees with itself unshifted
        fh, fw = ex["flip_shift"]
        assert ex["p_correct"][flips["dh"].index(fh)][flips["dw"].index(fw)] == 0.0 and ex["flip_prediction"] != ex["label"]
    assert_real_png(out / "flips.png")
    assert_real_png(out / "consistency.png")
    assert "same prediction" in (out / "report.html").read_text()


# -- latency spread ----------------------------------------------------------------------------------------------------
def fake_clock(durations):
    """A perf_counter whose (start, stop) pairs are ``durations`` apart in turn (the runs alternate baseline, patched)."""
    import itertools

    steps = itertools.cycle(durations)
    state = {"t": 100.0, "calls": 0}

    def clock():
        state["calls"] += 1
        if state["calls"] % 2 == 0:
            state["t"] += next(steps)
        return state["t"]

    return clock


def patch_eval(tmp_path, monkeypatch, durations):
    from shiftaudit.antialias import costs

    monkeypatch.setattr(costs, "clock", fake_clock(durations))
    data = write_image_folder(tmp_path / "photos", classes=3, per_class=1, size=16)
    model = positional_model(tmp_path / "m.pt")
    rep = tmp_path / "patch.json"
    res = runner.invoke(app, ["patch", str(model), "--eval", "--data", str(data), *POSITIONAL[:-1], "--max-shift", "1",
                              "--json", str(rep)])
    assert res.exit_code == 0, res.output
    return res, json.loads(rep.read_text())["latency_ms"]


def test_latency_reports_median_and_iqr_and_stays_quiet_when_the_difference_is_clear(tmp_path, monkeypatch):
    res, lat = patch_eval(tmp_path, monkeypatch, [0.001, 0.002])  # baseline 1 ms, patched 2 ms, every time
    assert lat["baseline"] == pytest.approx(1.0) and lat["patched"] == pytest.approx(2.0)  # the medians, as before
    assert lat["repeats"] == 15 and lat["spread"]["baseline"]["repeats"] == 15
    assert lat["spread"]["patched"] == pytest.approx({"median": 2.0, "q1": 2.0, "q3": 2.0, "iqr": 0.0, "repeats": 15})
    assert lat["noise_exceeds_difference"] is False and "noise" not in res.stderr
    assert "IQR" in res.stdout


def test_latency_warns_when_noise_exceeds_the_difference(tmp_path, monkeypatch):
    # baseline 1 or 3 ms, patched 1.2 or 3.2 ms: a 0.2 ms "overhead" inside a 2 ms spread
    res, lat = patch_eval(tmp_path, monkeypatch, [0.001, 0.0012, 0.003, 0.0032])
    assert lat["spread"]["baseline"]["iqr"] == pytest.approx(2.0) and lat["noise_exceeds_difference"] is True
    warnings = [ln for ln in res.stderr.splitlines() if "noise exceeds the difference" in ln]
    assert len(warnings) == 1 and warnings[0].startswith("warning: ")
