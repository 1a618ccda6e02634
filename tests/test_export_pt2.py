"""torch.export archives (.pt2) end to end: `patch -o x.pt2` writes one that reloads to the same outputs (the
non-persistent blur filters travel with the graph) and audits exactly like the safetensors copy; archives that could
run code when torch loads them are refused without --trust-pickle."""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from shiftaudit.antialias import PatchConfig, patch_model
from shiftaudit.data.presets import PRESETS
from shiftaudit.loading import load_model, save_model
from shiftaudit.loading.formats import PT2, sniff_format
from shiftaudit.loading.pt2 import ExportedModel
from shiftaudit.models.demo import DEMO_ARCH, demo_cnn
from tests.helpers import assert_clean_error, cli, nothing_written

SIZE = 32
AUDIT = ["--max-shift", "2", "--device", "cpu", "--workers", "0", "--quiet"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The demo CNN (zero padding, so its blur pads matter) saved as safetensors, patched to .pt2 and to safetensors by
    the CLI, and the same patch made in memory."""
    root = tmp_path_factory.mktemp("pt2")
    torch.manual_seed(0)
    model = demo_cnn(num_classes=4, padding_mode="zeros").eval()
    src = root / "demo.safetensors"
    save_model(model, src, arch=DEMO_ARCH, num_classes=4, preprocessing=PRESETS["cifar"], arch_kwargs={"padding_mode": "zeros"})
    rng = np.random.default_rng(0)
    np.savez(root / "data.npz", images=rng.integers(0, 256, (6, SIZE, SIZE, 3), dtype=np.uint8), labels=rng.integers(0, 4, 6))
    for out in ("p.pt2", "p.safetensors"):
        res = cli("patch", src, "-o", root / out)
        assert res.exit_code == 0, res.output
    patched = patch_model(load_model(src).model, PatchConfig()).model.eval()
    return root, patched


def test_patch_writes_a_pt2_that_reloads_to_the_in_memory_patched_model(files):
    root, patched = files
    loaded = load_model(root / "p.pt2")
    assert loaded.format == "pt2" and isinstance(loaded.model, ExportedModel)
    assert loaded.arch == DEMO_ARCH and loaded.num_classes == 4 and loaded.preprocessing == PRESETS["cifar"]
    assert loaded.patch_spec is not None and loaded.patch_spec["method"] == "blurpool"
    blur = [name for name, buf in patched.named_buffers() if name not in patched.state_dict()]
    assert blur, "the patched demo has non-persistent blur filters"
    x = torch.randn(5, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = patched(x)
        assert torch.allclose(loaded.model(x), want, atol=1e-6, rtol=1e-6)
        assert torch.allclose(loaded.model(x[:1]), want[:1], atol=1e-6, rtol=1e-6)  # any batch size, 1 included
    assert loaded.model.eval() is loaded.model and not loaded.model.training  # eval() is allowed, and a no-op


def test_eval_of_the_pt2_equals_eval_of_the_safetensors_patched_model(files, tmp_path):
    root, _ = files
    reports = {}
    for name in ("p.pt2", "p.safetensors"):
        report = tmp_path / f"{name}.json"
        res = cli("eval", root / name, "--data", root / "data.npz", *AUDIT, "--json", report)  # no --arch: metadata
        assert res.exit_code == 0, res.output
        reports[name] = json.loads(report.read_text())
    a, b = reports["p.pt2"], reports["p.safetensors"]
    assert a["metrics"] == b["metrics"] and a["per_image"] == b["per_image"] and a["settings"] == b["settings"]
    assert a["model"]["format"] == "pt2" and a["model"]["patch"] == b["model"]["patch"] is not None


def test_patch_picks_pt2_from_the_suffix_and_says_how_to_load_it(files, tmp_path):
    root, _ = files
    out = tmp_path / "aa.pt2"
    res = cli("patch", root / "demo.safetensors", "-o", out)
    assert res.exit_code == 0, res.output
    assert f"wrote {out} (pt2)" in res.stdout and "torch.export.load" in res.stdout
    assert sniff_format(out) == PT2
    help_text = cli("patch", "--help").stdout
    assert ".pt2" in help_text and "deprecated" in help_text


def test_a_pt2_exported_without_shiftaudit_loads_and_audits(files, tmp_path):
    root, patched = files
    program = torch.export.export(patched, (torch.zeros(2, 3, SIZE, SIZE),), dynamic_shapes=({0: torch.export.Dim("n")},))
    path = tmp_path / "plain.bin"  # any name: the content says what it is
    torch.export.save(program, str(path))
    loaded = load_model(path)
    assert loaded.format == "pt2" and loaded.num_classes == 4 and loaded.arch is None and loaded.patch_spec is None
    res = cli("eval", path, "--data", root / "data.npz", "--preset", "cifar", *AUDIT)
    assert res.exit_code == 0, res.output


def test_what_a_flat_graph_cannot_do_is_one_sentence(files, tmp_path):
    root, _ = files
    pt2 = root / "p.pt2"
    res = cli("eval", pt2, "--data", root / "data.npz", *AUDIT, "--layers", "auto")
    assert_clean_error(res, "Per-layer feature distances hook PyTorch modules", "torch.export archive")
    out = tmp_path / "again.safetensors"
    assert_clean_error(cli("patch", pt2, "-o", out), "A torch.export archive (.pt2) cannot be patched", "PyTorch model")
    assert nothing_written(out)
    res = cli("inspect", pt2)
    assert res.exit_code == 0 and "torch.export archives (.pt2) are audited as black boxes" in res.stdout


# -- archives that could run code when torch.export.load reads them --------------------------------------------------


def rewrite(src: Path, dest: Path, change: Callable[[str, bytes], bytes], add: dict[str, bytes] | None = None) -> Path:
    """A copy of the archive with each member passed through ``change(name, data)`` and ``add``'s members added."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
        root = zin.namelist()[0].split("/", 1)[0]
        for info in zin.infolist():
            zout.writestr(info.filename, change(info.filename, zin.read(info.filename)))
        for name, data in (add or {}).items():
            zout.writestr(f"{root}/{name}", data)
    return dest


def _edit_json(suffix: str, edit: Callable[[dict], None]) -> Callable[[str, bytes], bytes]:
    def change(name: str, data: bytes) -> bytes:
        if not name.endswith(suffix):
            return data
        obj = json.loads(data)
        edit(obj)
        return json.dumps(obj).encode()

    return change


def _first_node(obj: dict) -> dict:
    return obj["graph_module"]["graph"]["nodes"][0]


def _pickle_first_weight(obj: dict) -> None:
    next(iter(obj["config"].values()))["use_pickle"] = True


def _set_expr(obj: dict) -> None:
    for value in obj["graph_module"]["graph"]["tensor_values"].values():
        for dim in value["sizes"]:
            if "as_expr" in dim:
                dim["as_expr"]["expr_str"] = "__import__('os').getcwd()"
                return
    raise AssertionError("no symbolic size")


TAMPERED = {
    "pickled weight": (_edit_json("model_weights_config.json", _pickle_first_weight), None, "a pickled payload"),
    "guard code": (_edit_json("models/model.json", lambda o: o.update(guards_code=["print(1)"])), None, "guard code"),
    "call target": (
        _edit_json("models/model.json", lambda o: _first_node(o).update(target="torch.os.system")), None,
        "a call to torch.os.system, which is not an ATen operator",
    ),
    "file access": (
        _edit_json("models/model.json", lambda o: _first_node(o).update(target="torch.ops.aten.from_file.default")), None,
        "a call to torch.ops.aten.from_file.default",
    ),
    "shape expression": (_edit_json("models/model.json", _set_expr), None, "a shape expression that is not plain arithmetic"),
    "compiled code": (lambda n, d: d, {"data/aotinductor/model/model.so": b"\x7fELF"}, "compiled code or external weights"),
    "sample inputs": (
        lambda n, d: pickle.dumps(_Touch(Path("never"))) if n.endswith("data/sample_inputs/model.pt") else d, None,
        "sample inputs that need full unpickling",
    ),
}


@pytest.mark.parametrize("case", list(TAMPERED), ids=list(TAMPERED))
def test_an_archive_that_could_run_code_is_refused_without_trust_pickle(files, tmp_path, case):
    root, _ = files
    change, add, needle = TAMPERED[case]
    bad = rewrite(root / "p.pt2", tmp_path / "bad.pt2", change, add)
    report = tmp_path / "r.json"
    res = cli("eval", bad, "--data", root / "data.npz", *AUDIT, "--json", report)
    assert_clean_error(res, f"torch.export archive {bad} holds {needle}", "loading it can run code from the file",
                       "Pass --trust-pickle if you trust it")
    assert nothing_written(report)


class _Touch:
    """Unpickling this creates a file: what any code in a hostile pickle could do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return Path.touch, (self.path,)


def test_a_pickled_weight_really_runs_code_when_trusted_and_never_without(files, tmp_path):
    root, _ = files
    marker = tmp_path / "ran"

    def change(name: str, data: bytes) -> bytes:
        if name.endswith("model_weights_config.json"):
            obj = json.loads(data)
            _pickle_first_weight(obj)
            return json.dumps(obj).encode()
        if name.endswith("/data/weights/weight_0"):
            return pickle.dumps(_Touch(marker))
        return data

    config = json.loads(zipfile.ZipFile(root / "p.pt2").read(
        next(n for n in zipfile.ZipFile(root / "p.pt2").namelist() if n.endswith("model_weights_config.json"))))
    assert next(iter(config["config"].values()))["path_name"] == "weight_0"
    bad = rewrite(root / "p.pt2", tmp_path / "evil.pt2", change)
    assert_clean_error(cli("inspect", bad), "holds a pickled payload")
    assert not marker.exists()
    cli("inspect", bad, "--trust-pickle")  # fails to load afterwards; the point is what ran before
    assert marker.exists()


def test_damaged_archives_are_one_sentence(files, tmp_path):
    root, _ = files
    data = (root / "p.pt2").read_bytes()
    cut = tmp_path / "cut.pt2"
    cut.write_bytes(data[: len(data) // 2])
    assert_clean_error(cli("inspect", cut), f"Checkpoint {cut} is a truncated or corrupt zip archive")
    no_program = rewrite(root / "p.pt2", tmp_path / "empty.pt2", lambda n, d: b"{}" if n.endswith("models/model.json") else d)
    assert_clean_error(cli("inspect", no_program, "--trust-pickle"), f"torch.export archive {no_program} cannot be loaded")
