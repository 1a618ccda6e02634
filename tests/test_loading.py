"""Checkpoint loading and saving on real files written by the tests (no downloads)."""

from __future__ import annotations

import json
import sys
import types
import warnings
import zipfile

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from shiftaudit.data.presets import PRESETS
from shiftaudit.errors import CheckpointError, UsageError
from shiftaudit.loading import (
    LoadedModel,
    build_model,
    load_model,
    read_state_dict,
    save_model,
)
from tests.helpers import tiny_cnn


@pytest.fixture(autouse=True)
def _signature_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """One identification cache per test session, never the user's ~/.cache."""
    monkeypatch.setenv("SHIFTAUDIT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "shiftaudit-cache"))


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=3).eval()


def same_outputs(a: nn.Module, b: nn.Module, size: int = 32) -> bool:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.equal(a(x), b(x))


def assert_one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text
    return text


# -- torch.save state dicts -----------------------------------------------------------------------------------------
def test_plain_state_dict_with_arch(tmp_path, resnet):
    path = tmp_path / "r18.pth"
    torch.save(resnet.state_dict(), path)
    loaded = load_model(path, arch="ResNet18")
    assert isinstance(loaded, LoadedModel)
    assert (loaded.format, loaded.arch, loaded.arch_source, loaded.num_classes) == ("state_dict", "resnet18", "--arch", 3)
    assert not loaded.model.training
    assert loaded.parameter_count == sum(p.numel() for p in resnet.parameters())
    assert any("inferred from fc.weight" in n for n in loaded.notes)
    assert same_outputs(loaded.model, resnet)


@pytest.mark.parametrize(
    "wrapper, prefix",
    [("state_dict", ""), ("model", "module."), ("model_state_dict", "_orig_mod."), ("state_dict", "module._orig_mod.")],
)
def test_wrapped_and_prefixed_state_dicts(tmp_path, resnet, wrapper, prefix):
    sd = {prefix + k: v for k, v in resnet.state_dict().items()}
    path = tmp_path / "ckpt.pt"
    torch.save({wrapper: sd, "epoch": 7, "optimizer": {"lr": 0.1}}, path)
    loaded = load_model(path, arch="resnet18")
    assert same_outputs(loaded.model, resnet)
    assert any(wrapper in n for n in loaded.notes)
    if prefix:
        assert any("prefix" in n for n in loaded.notes)


def test_non_tensor_entries_dropped_with_note(tmp_path):
    model = tiny_cnn(4)
    sd = dict(model.state_dict())
    sd["epoch"] = 3
    path = tmp_path / "tiny.pt"
    torch.save(sd, path)
    sys_mod = types.ModuleType("tinyfactory_drop")
    sys_mod.make = lambda num_classes=5: tiny_cnn(num_classes)  # type: ignore[attr-defined]
    sys.modules["tinyfactory_drop"] = sys_mod
    try:
        loaded = load_model(path, arch="tinyfactory_drop:make")
    finally:
        del sys.modules["tinyfactory_drop"]
    assert loaded.num_classes == 4
    assert any("non-tensor" in n and "epoch" in n for n in loaded.notes)
    assert same_outputs(loaded.model, model, 12)


def test_legacy_non_zip_format(tmp_path, resnet):
    path = tmp_path / "legacy.pt"
    torch.save(resnet.state_dict(), path, _use_new_zipfile_serialization=False)
    assert same_outputs(load_model(path, arch="resnet18").model, resnet)


# -- safetensors ----------------------------------------------------------------------------------------------------
def test_safetensors_without_metadata(tmp_path, resnet):
    path = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in resnet.state_dict().items()}, str(path))
    loaded = load_model(path, arch="resnet18")
    assert loaded.format == "safetensors" and loaded.preprocessing is None
    assert same_outputs(loaded.model, resnet)


def test_safetensors_round_trip_needs_no_flags(tmp_path, resnet):
    path = tmp_path / "out" / "r18.safetensors"
    save_model(resnet, path, arch="resnet18", preprocessing=PRESETS["cifar"], class_names=["a", "b", "c"])
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # atomic: no temp file left
    loaded = load_model(path)
    assert (loaded.arch, loaded.arch_source, loaded.num_classes) == ("resnet18", "metadata", 3)
    assert loaded.preprocessing == PRESETS["cifar"]
    assert loaded.class_names == ["a", "b", "c"]
    assert same_outputs(loaded.model, resnet)
    sd, meta = read_state_dict(path)
    assert meta["shiftaudit.format"] == "1" and meta["shiftaudit.arch"] == "resnet18"
    assert json.loads(meta["shiftaudit.class_names"]) == ["a", "b", "c"]
    assert set(sd) == set(resnet.state_dict())
    # saving a LoadedModel keeps what it knows
    again = tmp_path / "again.safetensors"
    save_model(loaded, again)
    assert load_model(again).class_names == ["a", "b", "c"]


class Tied(nn.Module):
    def __init__(self, num_classes: int = 6) -> None:
        super().__init__()
        self.embed = nn.Linear(4, num_classes, bias=False)
        self.out = nn.Linear(4, num_classes, bias=False)
        self.out.weight = self.embed.weight  # tied
        self.register_buffer("t", torch.arange(12.0).reshape(3, 4).t())  # non-contiguous

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x) + self.embed(x)


def test_save_tied_and_non_contiguous_tensors(tmp_path, monkeypatch):
    mod = types.ModuleType("tiedmodels")
    mod.Tied = Tied  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tiedmodels", mod)
    model = Tied()
    path = tmp_path / "tied.safetensors"
    save_model(model, path, arch="tiedmodels:Tied")
    with pytest.raises(CheckpointError, match="--arch tiedmodels:Tied") as exc:
        load_model(path)  # a factory outside shiftaudit named by the file is not imported
    assert_one_line(exc)
    loaded = load_model(path, arch="tiedmodels:Tied")
    x = torch.randn(2, 4)
    assert torch.equal(loaded.model(x), model(x))
    assert torch.equal(loaded.model.t, model.t)


def test_malformed_metadata(tmp_path, resnet):
    path = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in resnet.state_dict().items()}, str(path),
              metadata={"shiftaudit.format": "1", "shiftaudit.arch": "resnet18", "shiftaudit.preprocessing": "{not json"})
    with pytest.raises(CheckpointError, match="shiftaudit.preprocessing") as exc:
        load_model(path)
    assert_one_line(exc)


def test_patched_checkpoint_applies_spec_before_weights(tmp_path, resnet, monkeypatch):
    path = tmp_path / "patched.safetensors"
    patched = torchvision.models.resnet18(weights=None, num_classes=3).eval()
    patched.load_state_dict(resnet.state_dict())
    patched.maxpool = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.AvgPool2d(2))
    save_model(patched, path, arch="resnet18", patch_spec={"filter": "rect2"})

    monkeypatch.setitem(sys.modules, "shiftaudit.antialias", None)
    with pytest.raises(CheckpointError, match="patch") as exc:
        load_model(path)
    assert_one_line(exc)

    calls = []

    def apply_patch_spec(model, spec):
        calls.append(spec)
        model.maxpool = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.AvgPool2d(2))
        return model

    fake = types.ModuleType("shiftaudit.antialias")
    fake.apply_patch_spec = apply_patch_spec  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "shiftaudit.antialias", fake)
    loaded = load_model(path)
    assert calls == [{"filter": "rect2"}] and loaded.patch_spec == {"filter": "rect2"}
    assert same_outputs(loaded.model, patched)


# -- whole-model files ----------------------------------------------------------------------------------------------
def test_torchscript(tmp_path, resnet):
    path = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(resnet).save(str(path))
    loaded = load_model(path, arch="resnet18")
    assert loaded.format == "torchscript" and loaded.arch is None and loaded.num_classes == 3
    assert any("ignored" in n for n in loaded.notes)
    assert same_outputs(loaded.model, resnet)


def test_save_torchscript_keeps_metadata(tmp_path):
    model = tiny_cnn(4).eval()
    path = tmp_path / "tiny.ts"
    save_model(model, path, format="torchscript", preprocessing=PRESETS["cifar"], class_names=list("abcd"))
    loaded = load_model(path)
    assert loaded.format == "torchscript"
    assert loaded.preprocessing == PRESETS["cifar"] and loaded.class_names == list("abcd")
    assert same_outputs(loaded.model, model, 12)
    names = zipfile.ZipFile(path).namelist()  # no temporary file name as the archive's folder
    assert {n.split("/", 1)[0] for n in names} == {"archive"}, names


def test_pickled_model_needs_trust(tmp_path):
    model = tiny_cnn(4).eval()
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    with pytest.raises(CheckpointError, match="--trust-pickle") as exc:
        load_model(path)
    assert "pickled Python object" in assert_one_line(exc)
    loaded = load_model(path, trust_pickle=True)
    assert loaded.format == "pickle" and loaded.arch_source == "n/a" and loaded.num_classes == 4
    assert same_outputs(loaded.model, model, 12)

    wrapped = tmp_path / "wrapped.pt"
    torch.save({"model": model, "epoch": 1}, wrapped)
    with pytest.raises(CheckpointError, match="--trust-pickle"):
        load_model(wrapped)
    assert same_outputs(load_model(wrapped, trust_pickle=True).model, model, 12)


# -- architectures --------------------------------------------------------------------------------------------------
def test_factory_from_module_on_path(tmp_path, monkeypatch):
    (tmp_path / "my_models_pkg").mkdir()
    (tmp_path / "my_models_pkg" / "__init__.py").write_text("")
    (tmp_path / "my_models_pkg" / "nets.py").write_text(
        "from tests.helpers import tiny_cnn\n\ndef small(num_classes=5):\n    return tiny_cnn(num_classes)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = tiny_cnn(7).eval()
    path = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), path)
    loaded = load_model(path, arch="my_models_pkg.nets:small")
    assert loaded.num_classes == 7 and loaded.arch == "my_models_pkg.nets:small"
    assert same_outputs(loaded.model, model, 12)
    assert isinstance(build_model("my_models_pkg.nets:small", 2), nn.Sequential)
    with pytest.raises(UsageError, match="no attribute"):
        build_model("my_models_pkg.nets:nope")
    with pytest.raises(UsageError, match="Cannot import"):
        build_model("no_such_pkg_xyz.mod:fn")


def test_unknown_arch_suggests():
    with pytest.raises(UsageError, match=r"Unknown architecture 'resnt18'; did you mean resnet18") as exc:
        build_model("resnt18")
    assert_one_line(exc)


def test_build_model_num_classes_and_case():
    model = build_model("SqueezeNet1_1", num_classes=4)
    assert not model.training
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 4)


def test_timm_missing_is_clear(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(UsageError, match=r"pip install shiftaudit\[timm\]"):
        build_model("timm:resnet18")


# -- errors ---------------------------------------------------------------------------------------------------------
def _truncated_zip(tmp_path, resnet):
    path = tmp_path / "trunc.pt"
    torch.save(resnet.state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _corrupt_zip(tmp_path, resnet):
    path = tmp_path / "corrupt.pt"
    torch.save(resnet.state_dict(), path)
    with zipfile.ZipFile(path) as zf:
        name = next(n for n in zf.namelist() if n.endswith("data.pkl"))
        info = zf.getinfo(name)
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start:start + 20] = b"\x00" * 20
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda d, m: d / "nope.pt", "does not exist"),
        (lambda d, m: d, "is a directory"),
        (lambda d, m: (d / "empty.pt").write_bytes(b"") and d / "empty.pt" or d / "empty.pt", "is empty"),
        (lambda d, m: (d / "notes.pt").write_text("hello, this is text\n") and d / "notes.pt", "text file"),
        (lambda d, m: (d / "pic.pth").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64) and d / "pic.pth", "PNG image"),
        (lambda d, m: (d / "x.safetensors").write_bytes(b"\x10\0\0\0\0\0\0\0{\"a\":") and d / "x.safetensors", "safetensors"),
        (lambda d, m: _truncated_zip(d, m), "truncated or corrupt"),
        (lambda d, m: _corrupt_zip(d, m), "corrupt"),
    ],
    ids=["missing", "directory", "empty", "text", "png", "bad-safetensors", "truncated-zip", "corrupt-zip"],
)
def test_unreadable_files(tmp_path, resnet, make, pattern):
    path = make(tmp_path, resnet)
    with pytest.raises(CheckpointError, match=pattern) as exc:
        load_model(path, arch="resnet18")
    assert_one_line(exc)


def test_wrong_arch_names_missing_keys_and_better_arch(tmp_path, resnet):
    path = tmp_path / "r18.pt"
    torch.save(resnet.state_dict(), path)
    with pytest.raises(CheckpointError) as exc:
        load_model(path, arch="resnet34")
    text = assert_one_line(exc)
    assert "missing from the checkpoint" in text and "layer1.2." in text
    assert "look like resnet18" in text


def test_unexpected_keys_named(tmp_path, resnet):
    sd = dict(resnet.state_dict())
    sd["extra.weight"] = torch.zeros(2)
    path = tmp_path / "extra.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"1 unexpected checkpoint key \(extra.weight\)") as exc:
        load_model(path, arch="resnet18")
    assert_one_line(exc)


def test_shape_mismatch_named(tmp_path, resnet):
    sd = dict(resnet.state_dict())
    sd["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    path = tmp_path / "shape.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"conv1.weight, checkpoint \[64, 3, 3, 3\] vs model \[64, 3, 7, 7\]") as exc:
        load_model(path, arch="resnet18")
    assert_one_line(exc)


def test_num_classes_mismatch(tmp_path, resnet):
    path = tmp_path / "r18.pt"
    torch.save(resnet.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"has 3 classes .* pass --num-classes 3") as exc:
        load_model(path, arch="resnet18", num_classes=10)
    assert_one_line(exc)


def test_metadata_factory_inside_shiftaudit_is_trusted(tmp_path, monkeypatch):
    """Our own factories (e.g. the demo model) load from metadata alone, even without a num_classes parameter."""
    fake = types.ModuleType("shiftaudit._test_models")
    fake.fixed = lambda: tiny_cnn(5)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "shiftaudit._test_models", fake)
    model = tiny_cnn(5).eval().half()
    path = tmp_path / "demo.safetensors"
    save_model(model, path, arch="shiftaudit._test_models:fixed", preprocessing=PRESETS["cifar"])
    loaded = load_model(path)
    assert (loaded.arch_source, loaded.num_classes) == ("metadata", 5)
    assert any("float16" in n for n in loaded.notes)
    with pytest.raises(UsageError, match="does not accept"):
        load_model(path, num_classes=3)


@pytest.mark.parametrize("kind", ["state dict", "torchscript"])
@pytest.mark.parametrize("twin", ["same name", "other case"])
def test_a_zip_checkpoint_torch_could_read_differently_is_refused_before_torch_opens_it(tmp_path, kind, twin):
    """torch's zip reader looks names up case-insensitively and picks any of two equal names: such a checkpoint is
    refused in one sentence, whatever its kind, before any loader reads it."""
    import io

    from shiftaudit.ziparchive import ZipArchive
    from tests import zipcraft

    buf = io.BytesIO()
    if kind == "state dict":
        torch.save(tiny_cnn().state_dict(), buf)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(torch.jit.script(tiny_cnn()), buf)
    archive = ZipArchive(buf.getvalue())
    members = [zipcraft.member(n, archive.read(n, 1 << 24)) for n in archive.names]
    first = archive.names[0]
    other = first if twin == "same name" else first.upper()
    path = tmp_path / "m.pt"
    path.write_bytes(zipcraft.build([*members, zipcraft.member(other, b"other")]))
    with pytest.raises(CheckpointError, match="zip readers could read differently") as exc:
        load_model(path, arch="resnet18")
    assert "two members named" in str(exc.value)
    assert_one_line(exc)


def test_save_model_refuses_a_suffix_naming_another_format(tmp_path):
    """The library refuses what `patch -o` refuses, naming its own parameters."""
    model = tiny_cnn(4).eval()
    for name, fmt, needle in (("m.onnx", "safetensors", "not ONNX"), ("m.pt", "safetensors", "format=torchscript"),
                              ("m.pt2", "torchscript", "format=pt2"), ("m.safetensors", "pt2", "format=safetensors")):
        with pytest.raises(UsageError, match=f"^path {tmp_path / name} ends in .*{needle}"):
            save_model(model, tmp_path / name, format=fmt)
        assert not (tmp_path / name).exists()
    save_model(model, tmp_path / "m.bin", arch="tests.helpers:tiny_cnn")  # a suffix naming no format: as asked
    assert load_model(tmp_path / "m.bin", arch="tests.helpers:tiny_cnn").format == "safetensors"
