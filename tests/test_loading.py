"""Checkpoint loading and saving on real files written by the tests (no downloads)."""

from __future__ import annotations

import json
import struct
import sys
import textwrap
import types
import uuid
import warnings
import zipfile

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from shiftaudit.cli import app
from shiftaudit.data.presets import PRESETS
from shiftaudit.errors import CheckpointError, UsageError
from shiftaudit.loading import (
    LoadedModel,
    build_model,
    load_model,
    read_state_dict,
    save_model,
)
from tests.helpers import (
    TINY_FILES_MODULE,
    assert_clean_error,
    cli,
    files_eval_args,
    inspect_json,
    net_state,
    runner,
    safetensors_with_metadata,
    signature_cache_dir,
    tiny_cnn,
)


@pytest.fixture(autouse=True)
def _signature_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """One identification cache per test run, never the user's ~/.cache."""
    monkeypatch.setenv("SHIFTAUDIT_CACHE_DIR", str(signature_cache_dir(tmp_path_factory)))


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
    save_file(
        {k: v.contiguous() for k, v in resnet.state_dict().items()},
        str(path),
        metadata={"shiftaudit.format": "1", "shiftaudit.arch": "resnet18", "shiftaudit.preprocessing": "{not json"},
    )
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
    data[start : start + 20] = b"\x00" * 20
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
        (lambda d, m: (d / "x.safetensors").write_bytes(b'\x10\0\0\0\0\0\0\0{"a":') and d / "x.safetensors", "safetensors"),
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
    for name, fmt, needle in (
        ("m.onnx", "safetensors", "not ONNX"),
        ("m.pt", "safetensors", "format=torchscript"),
        ("m.pt2", "torchscript", "format=pt2"),
        ("m.safetensors", "pt2", "format=safetensors"),
    ):
        with pytest.raises(UsageError, match=f"^path {tmp_path / name} ends in .*{needle}"):
            save_model(model, tmp_path / name, format=fmt)
        assert not (tmp_path / name).exists()
    save_model(model, tmp_path / "m.bin", arch="tests.helpers:tiny_cnn")  # a suffix naming no format: as asked
    assert load_model(tmp_path / "m.bin", arch="tests.helpers:tiny_cnn").format == "safetensors"


class _Evil:
    """Unpickling this runs ``open(marker, 'w')``: proof of code execution if the marker appears."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.marker, "w"))


def test_pickled_checkpoint_is_never_unpickled_without_trust_pickle(tiny_files, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {"fc.weight": torch.zeros(3, 8)}, "payload": _Evil(str(marker))}, evil)
    for legacy in (False, True):
        path = evil if not legacy else tmp_path / "evil_legacy.pt"
        if legacy:
            torch.save({"payload": _Evil(str(marker))}, path, _use_new_zipfile_serialization=False)
        res = cli(*files_eval_args(tiny_files, "--json", tmp_path / "r.json", model=path))
        line = assert_clean_error(res, "--trust-pickle", "runs code")
        assert "pickled Python object" in line
        assert not marker.exists(), "the pickle ran code without --trust-pickle"
        res = cli("inspect", path)
        assert_clean_error(res, "--trust-pickle")
        assert not marker.exists()


def test_trust_pickle_is_what_allows_full_unpickling(tiny_files, tmp_path):
    """The flag really is the gate: with it, the same file is unpickled (here: the marker is written)."""
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"model": _Evil(str(marker))}, path)
    res = cli("inspect", path, "--trust-pickle")
    assert marker.exists()
    assert res.exit_code == 2 and "Traceback" not in res.output  # a file handle is no model: still a clean error


def test_metadata_factory_outside_shiftaudit_is_not_imported(tiny_files, tmp_path, monkeypatch):
    """A safetensors file naming ``evilmod:build`` must not import evilmod; the user has to pass --arch themselves."""
    marker = tmp_path / "imported"
    pkgs = tmp_path / "pkgs"
    pkgs.mkdir()
    (pkgs / "sa_evilmod.py").write_text(f"open({str(marker)!r}, 'w').close()\nfrom {TINY_FILES_MODULE} import tiny as build\n")
    monkeypatch.syspath_prepend(str(pkgs))
    monkeypatch.syspath_prepend(str(tiny_files.root / "pkgs"))
    monkeypatch.delitem(sys.modules, "sa_evilmod", raising=False)
    ckpt = safetensors_with_metadata(
        tiny_files.safetensors, tmp_path / "m.safetensors", {"shiftaudit.format": "1", "shiftaudit.arch": "sa_evilmod:build"}
    )
    res = cli(*files_eval_args(tiny_files, model=ckpt, arch=None))
    assert_clean_error(res, "sa_evilmod:build", "outside shiftaudit", "--arch")
    assert not marker.exists() and "sa_evilmod" not in sys.modules
    # naming it explicitly is the user's decision
    res = cli(*files_eval_args(tiny_files, "--quiet", model=ckpt, arch="sa_evilmod:build"))
    sys.modules.pop("sa_evilmod", None)
    assert res.exit_code == 0, res.output
    assert marker.exists()


@pytest.mark.parametrize(
    "key, value, needle",
    [
        ("shiftaudit.arch_kwargs", '{"__class__": "os.system"}', "not an object of keyword arguments"),
        ("shiftaudit.arch_kwargs", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("shiftaudit.patch", json.dumps({"x": "a" * 1_100_000}), "characters long"),
        ("shiftaudit.class_names", '{"__class__": "builtins.eval"}', "not a list of strings"),
        ("shiftaudit.preprocessing", '{"__reduce__": ["os.system", ["true"]]}', "preprocessing"),
        ("shiftaudit.arch", "os:system", "outside shiftaudit"),
    ],
    ids=["dunder-kwargs", "deep-json", "huge-json", "class-names-object", "preprocessing-reduce", "arch-os-system"],
)
def test_safetensors_metadata_is_data_only(tiny_files, tmp_path, key, value, needle):
    ckpt = safetensors_with_metadata(tiny_files.safetensors, tmp_path / "m.safetensors", {"shiftaudit.format": "1", key: value})
    res = cli(*files_eval_args(tiny_files, model=ckpt, arch=None))
    line = assert_clean_error(res)
    assert needle in line
    assert len(line) < 600  # the hostile value is not echoed back


def test_header_length_beyond_the_file_is_a_clean_error(tiny_files, tmp_path):
    path = tmp_path / "lie.safetensors"
    path.write_bytes(struct.pack("<Q", 10**12) + b'{"__metadata__": {}}')
    assert_clean_error(cli(*files_eval_args(tiny_files, model=path, arch=None)), "safetensors")


FACTORY_SOURCE = """
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
"""


def factory_module(folder):
    """A factory module with a fresh name (so no earlier import is cached), written into ``folder``."""
    name = f"friction_models_{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(textwrap.dedent(FACTORY_SOURCE))
    return name


def test_factory_with_arch_kwargs_in_the_current_folder_and_stored_when_patched(tmp_path, monkeypatch):
    mod = factory_module(tmp_path / "code")
    monkeypatch.chdir(tmp_path / "code")  # no PYTHONPATH: the current folder is importable
    ckpt = tmp_path / "lite1.pt"
    torch.save(net_state(6), ckpt)
    rep = inspect_json(ckpt, "--arch", f"{mod}:make", "--arch-kwargs", '{"model_name": "lite1"}')
    assert rep["model"]["arch"] == f"{mod}:make" and rep["inspection"]["points"][0]["name"] == "conv"
    # without the argument the factory cannot be called: said in one sentence that names the flag giving it
    line = assert_clean_error(runner.invoke(app, ["inspect", str(ckpt), "--arch", f"{mod}:make"]), "model_name")
    assert line == (
        f"error: Factory {mod}:make needs the argument model_name, which neither the checkpoint nor "
        """--arch-kwargs gives; pass --arch-kwargs '{"model_name": "..."}' (arch_kwargs= in Python)."""
    )

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
    for bad, needle in (
        ("{model_name: lite0}", "not valid JSON"),
        ('["lite0"]', "not a list"),
        ('"lite0"', "not a str"),
        ('{"num_classes": 3}', "--num-classes"),
    ):
        for cmd in ("inspect", "eval", "patch"):
            extra = ["--data", str(tmp_path)] if cmd == "eval" else []
            res = runner.invoke(app, [cmd, str(ckpt), "--arch", "resnet18", "--arch-kwargs", bad, *extra])
            assert_clean_error(res, "--arch-kwargs", needle)
