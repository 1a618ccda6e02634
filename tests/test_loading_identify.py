"""Architecture identification from state-dict keys and shapes, and its on-disk signature cache."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision

from shiftaudit.errors import CheckpointError
from shiftaudit.loading import identify_architecture, load_model
from shiftaudit.loading.identify import Candidate, Signature, SignatureCache, _decide
from tests.helpers import tiny_cnn


@pytest.fixture(autouse=True)
def _signature_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIFTAUDIT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "shiftaudit-cache"))


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
