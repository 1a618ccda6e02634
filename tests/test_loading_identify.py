"""Architecture identification from state-dict keys and shapes, and its on-disk signature cache."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision

from shiftaudit.cli import app
from shiftaudit.errors import CheckpointError
from shiftaudit.loading import identify_architecture, load_model
from shiftaudit.loading.identify import Candidate, Signature, SignatureCache, _decide
from tests.helpers import assert_clean_error, net_state, runner, signature_cache_dir, tiny_cnn


@pytest.fixture(autouse=True)
def _signature_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """One identification cache per test run, never the user's ~/.cache."""
    monkeypatch.setenv("SHIFTAUDIT_CACHE_DIR", str(signature_cache_dir(tmp_path_factory)))


@pytest.mark.slow
def test_identifies_resnet18_and_loads_without_flags(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=3).eval()
    result = identify_architecture(model.state_dict())
    assert (result.arch, result.num_classes) == ("resnet18", 3)
    again = identify_architecture(model.state_dict())
    assert again.arch == "resnet18" and again.seconds < 5  # warm cache: no model is built
    path = tmp_path / "r18.pt"
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, path)
    loaded = load_model(path)
    assert (loaded.arch, loaded.arch_source, loaded.num_classes) == ("resnet18", "identified from weights", 3)
    assert any("identified from weights as resnet18" in n for n in loaded.notes)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))


def test_identifies_mobilenet_v3_small():
    model = torchvision.models.mobilenet_v3_small(weights=None, num_classes=5)
    result = identify_architecture(model.state_dict())
    assert (result.arch, result.num_classes) == ("mobilenet_v3_small", 5)


@pytest.mark.slow
def test_identifies_timm_model(tmp_path):
    timm = pytest.importorskip("timm")
    model = timm.create_model("starnet_s050", pretrained=False, num_classes=6).eval()
    path = tmp_path / "starnet.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    loaded = load_model(path)
    assert (loaded.arch, loaded.num_classes) == ("timm:starnet_s050", 6)
    assert loaded.preprocessing is not None and loaded.preprocessing.size == (224, 224)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))


def test_unidentifiable_weights_name_no_far_candidates(tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(tiny_cnn(4).state_dict(), path)
    with pytest.raises(
        CheckpointError, match=r"Could not identify the architecture .*: unknown architecture, .*; pass --arch"
    ) as exc:
        load_model(path)
    assert "\n" not in str(exc.value) and "closest" not in str(exc.value)


def test_only_close_candidates_are_suggested():
    from shiftaudit.loading.identify import IdentifyResult

    far = Candidate("alexnet", 263, None, "s", matched=0, union=263)
    near = Candidate("resnet18", 4, 3, "t", matched=100, union=104)
    assert "unknown architecture" in IdentifyResult(None, None, [far]).explain("f.pt")
    text = IdentifyResult(None, None, [near, far]).explain("f.pt")
    assert "closest candidates: resnet18 (4 keys differ)" in text and "alexnet" not in text


def test_ambiguous_matches_are_refused_unless_identical():
    same = _decide([Candidate("b_alias", 0, 3, "s1"), Candidate("a", 0, 3, "s1"), Candidate("c", 4, None, "s2")])
    assert same is not None and same.arch == "a" and same.matches == ["a", "b_alias"]
    different = _decide([Candidate("x", 0, 3, "s1"), Candidate("y", 0, 3, "s2")])
    assert different is not None and different.arch is None
    assert "fits x, y equally well; pass --arch" in different.explain("f.pt")


def test_signature_cache_corrupt_and_unwritable(tmp_path):
    (tmp_path / "signatures-t.json").write_text("{ not json")
    cache = SignatureCache("t", tmp_path)
    assert cache.entries == {}  # corrupt: ignored, rebuilt on demand
    cache.put("m", Signature(["a.weight"], [[2, 3]], "h"))
    cache.save()
    reread = SignatureCache("t", tmp_path)
    assert isinstance(reread.get("m"), Signature)
    assert json.loads((tmp_path / "signatures-t.json").read_text())["version"] == 1

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    ro = SignatureCache("t", blocker / "sub")  # cannot be created, even as root
    ro.put("m", Signature(["a.weight"], [[2, 3]], "h"))
    ro.save()  # must not raise: identification just stays uncached
    assert ro.dirty


@pytest.mark.slow  # a cold search of every torchvision (and timm) signature; the threshold itself has a fast unit test
def test_identification_without_a_useful_candidate_lists_none(tmp_path):
    ckpt = tmp_path / "mine.pt"
    torch.save(net_state(4), ckpt)  # four keys that no known architecture shares
    line = assert_clean_error(runner.invoke(app, ["inspect", str(ckpt)]), "unknown architecture", "pass --arch")
    assert "closest" not in line and "alexnet" not in line and "vgg" not in line


@pytest.mark.slow
def test_identification_names_a_close_candidate(tmp_path):
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
                i, rest = key[len(f"{layer}.0.downsample.") :].split(".", 1)
                key = f"{layer}.0.downsample.{int(i) + 1}.{rest}"
        out[key] = value
    out["maxpool.1.filt"] = torch.ones(64, 1, filter_size, filter_size) / filter_size**2
    for layer, ch, inch in (("layer2", 128, 64), ("layer3", 256, 128), ("layer4", 512, 256)):
        out[f"{layer}.0.conv2.0.filt"] = torch.ones(ch, 1, filter_size, filter_size) / filter_size**2
        out[f"{layer}.0.downsample.0.filt"] = torch.ones(inch, 1, filter_size, filter_size) / filter_size**2
    return out


def test_antialiased_cnns_checkpoint_is_recognised_not_misidentified(tmp_path):
    ckpt = tmp_path / "resnet18_lpf4.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in antialiased_resnet18_state().items()}}, ckpt)
    line = assert_clean_error(
        runner.invoke(app, ["inspect", str(ckpt)]), "antialiased-cnns", "maxpool.1.filt", "--arch", "filter_size"
    )
    assert "identified" not in line and "closest" not in line
    # told resnet18, the load fails on the extra keys, and the sentence says what the file really is
    assert_clean_error(runner.invoke(app, ["inspect", str(ckpt), "--arch", "resnet18"]), "antialiased-cnns")


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_b0", "mobilenet_v3_small", "vit_b_16"])
def test_a_skeleton_skips_random_fills_and_keeps_every_name_and_shape(arch):
    """The random initialisers are skipped on the meta device only (they were two thirds of the build time): the
    signature equals that of a skeleton built with them, and real tensors are still filled."""
    from shiftaudit.loading import architectures
    from shiftaudit.loading.identify import signature_of

    fast = signature_of(architectures.build_skeleton(arch, 1000))
    with torch.device("meta"):
        slow = signature_of(architectures._construct(arch, 1000, {}))
    assert fast == slow
    with architectures._NoFillsOnMeta():
        real = torch.zeros(1000).normal_()
    assert real.std() > 0.5
