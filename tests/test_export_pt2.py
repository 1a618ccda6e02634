"""torch.export archives (.pt2) end to end: `patch -o x.pt2` writes one that reloads to the same outputs (the
non-persistent blur filters travel with the graph) and audits exactly like the safetensors copy; archives that could
run code when torch loads them are refused without --trust-pickle."""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shiftaudit.antialias import PatchConfig, patch_model
from shiftaudit.data.presets import PRESETS
from shiftaudit.errors import CheckpointError
from shiftaudit.loading import load_model, save_model
from shiftaudit.loading.formats import PT2, sniff_format
from shiftaudit.loading.pt2 import ExportedModel
from shiftaudit.models.demo import DEMO_ARCH, demo_cnn
from shiftaudit.ziparchive import ZipArchive
from tests import zipcraft
from tests.helpers import assert_clean_error, cli, examples, nothing_written

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
        _edit_json("models/model.json", lambda o: _first_node(o).update(target="torch.os.system")),
        None,
        "a call to torch.os.system, which is not an ATen operator",
    ),
    "file access": (
        _edit_json("models/model.json", lambda o: _first_node(o).update(target="torch.ops.aten.from_file.default")),
        None,
        "a call to torch.ops.aten.from_file.default",
    ),
    "shape expression": (_edit_json("models/model.json", _set_expr), None, "a shape expression that is not plain arithmetic"),
    "compiled code": (lambda n, d: d, {"data/aotinductor/model/model.so": b"\x7fELF"}, "compiled code or external weights"),
    "sample inputs": (
        lambda n, d: pickle.dumps(_Touch(Path("never"))) if n.endswith("data/sample_inputs/model.pt") else d,
        None,
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
    assert_clean_error(
        res,
        f"torch.export archive {bad} holds {needle}",
        "loading it can run code from the file",
        "Pass --trust-pickle if you trust it",
    )
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

    config = json.loads(
        zipfile.ZipFile(root / "p.pt2").read(
            next(n for n in zipfile.ZipFile(root / "p.pt2").namelist() if n.endswith("model_weights_config.json"))
        )
    )
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


# -- archives that torch would read differently from the check (ambiguous zip structure) ------------------------------


def _members(path: Path) -> list[tuple[str, bytes]]:
    """Every member of a real archive, in order, read by the strict reader."""
    archive = ZipArchive(path.read_bytes())
    return [(name, archive.read(name, 1 << 30)) for name in archive.names]


def _evil(members: list[tuple[str, bytes]], marker: Path) -> tuple[bytes, bytes, str]:
    """The weights config with its first weight switched to a pickle that touches ``marker``, that pickle, and the
    name of the config member."""
    config_name = next(n for n, _ in members if n.endswith("data/weights/model_weights_config.json"))
    config = json.loads(dict(members)[config_name])
    first = next(iter(config["config"].values()))
    first.update(use_pickle=True, path_name="evil")
    return json.dumps(config).encode(), pickle.dumps(_Touch(marker)), config_name


def _smuggle(members: list[tuple[str, bytes]], marker: Path, how: str) -> bytes:
    """The real archive plus a hostile config that only a reader other than the check would pick."""
    bad_config, payload, config_name = _evil(members, marker)
    root = config_name.split("/", 1)[0]
    out = []
    for name, data in members:
        if name != config_name:
            out.append(zipcraft.member(name, data))
            continue
        twin = name if how.startswith("duplicate") else name.replace("model_weights", "MODEL_weights")
        pair = [zipcraft.member(name, data), zipcraft.member(twin, bad_config)]
        out += pair[::-1] if how.endswith("hostile first") else pair
        out.append(zipcraft.member(f"{root}/data/weights/evil", payload))
    return zipcraft.build(out)


SMUGGLED = [
    "duplicate name, hostile first",
    "duplicate name, hostile last",
    "case variant, hostile first",
    "case variant, hostile last",
]


def test_an_archive_torch_reads_differently_never_runs_code(files, tmp_path):
    """The hole a hostile round found: a second weights config that Python's zipfile never sees but torch's miniz
    reader picks (a duplicate name, or the same name in other case) carried a pickle that ran during eval, without
    --trust-pickle. Torch itself runs the payload of at least one of these archives; shiftaudit refuses them all
    before torch sees a byte, and nothing runs."""
    root, _ = files
    members = _members(root / "p.pt2")
    ran_under_torch = []
    for i, how in enumerate(SMUGGLED):
        marker = tmp_path / f"ran{i}"
        blob = _smuggle(members, marker, how)
        try:
            with torch_export_quiet():
                torch.export.load(io.BytesIO(blob))
        except Exception:  # the payload is not a real tensor: torch fails after running it
            pass
        if marker.exists():
            ran_under_torch.append(how)
            marker.unlink()
        bad = tmp_path / f"smuggled{i}.pt2"
        bad.write_bytes(blob)
        report = tmp_path / "r.json"
        res = cli("eval", bad, "--data", root / "data.npz", *AUDIT, "--json", report)
        assert_clean_error(res, str(bad), "zip archive", "two members named")
        assert not marker.exists() and nothing_written(report)
        assert_clean_error(cli("inspect", bad, "--trust-pickle"), "two members named")  # damaged whatever the trust
        assert not marker.exists()
    assert ran_under_torch, "none of the crafted archives is a real exploit any more: rewrite the test"


def torch_export_quiet():
    from shiftaudit.loading.pt2 import _quiet_torch_export

    return _quiet_torch_export()


def test_pt2_check_and_torch_read_the_same_bytes_even_if_the_file_changes(files, tmp_path, monkeypatch):
    """The file is read once: a swap on disk between the check and torch's read changes nothing torch sees."""
    import shiftaudit.loading.pt2 as pt2

    root, _ = files
    good = root / "p.pt2"
    target = tmp_path / "swapped.pt2"
    target.write_bytes(good.read_bytes())
    marker = tmp_path / "ran"
    evil = _smuggle(_members(good), marker, "duplicate name, hostile last")  # torch runs this one (see above)
    real_check = pt2.untrusted_content

    def check_then_swap(archive):
        verdict = real_check(archive)
        target.write_bytes(evil)  # an attacker replaces the file right after the check
        return verdict

    monkeypatch.setattr(pt2, "untrusted_content", check_then_swap)
    loaded = load_model(target)
    assert isinstance(loaded.model, ExportedModel) and not marker.exists()


def test_an_archive_we_write_names_no_temporary_file_and_no_local_path(files, tmp_path):
    root, _ = files
    blob = (root / "p.pt2").read_bytes()
    names = ZipArchive(blob).names
    assert {n.split("/", 1)[0] for n in names} == {"archive"}
    for local in (str(Path.cwd()), str(Path(torch.__file__).parent), str(root), "site-packages", ".tmp", 'stack_trace": "File'):
        assert local.encode() not in blob, local


def _fixed_batch_archive(tmp_path: Path, patched: torch.nn.Module, batch: int) -> Path:
    program = torch.export.export(patched, (torch.zeros(batch, 3, SIZE, SIZE),))  # no dynamic_shapes: batch fixed
    path = tmp_path / f"fixed{batch}.pt2"
    torch.export.save(program, str(path))
    return path


@pytest.mark.parametrize("batch", [1, 3])
def test_a_pt2_exported_with_a_fixed_batch_runs_any_batch_in_chunks(files, tmp_path, batch):
    _, patched = files
    loaded = load_model(_fixed_batch_archive(tmp_path, patched, batch))
    assert f"fixed batch of {batch}" in " ".join(loaded.notes)
    x = torch.randn(7, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), patched(x), atol=1e-5, rtol=1e-5)


def test_a_pt2_exported_with_a_fixed_batch_audits_like_the_dynamic_one(files, tmp_path):
    root, patched = files
    reports = {}
    for name, model in (("fixed", _fixed_batch_archive(tmp_path, patched, 3)), ("dynamic", root / "p.pt2")):
        out = tmp_path / f"{name}.json"
        res = cli("eval", model, "--data", root / "data.npz", "--preset", "cifar", *AUDIT, "--batch-size", "5", "--json", out)
        assert res.exit_code == 0, res.output
        reports[name] = json.loads(out.read_text())
    fixed, dynamic = reports["fixed"]["per_image"], reports["dynamic"]["per_image"]
    assert fixed["correct"] == dynamic["correct"] and fixed.keys() == dynamic.keys()
    for key in fixed:
        # the batch size changes the last bits of a float; None (no value) reads as NaN on both sides
        np.testing.assert_allclose(
            np.array(fixed[key], dtype=float), np.array(dynamic[key], dtype=float), rtol=1e-4, atol=1e-9, err_msg=key
        )
    assert any("fixed batch of 3" in n for n in reports["fixed"]["notes"])


def test_a_pt2_exported_for_another_image_size_is_refused_before_any_work(files, tmp_path):
    root, patched = files
    path = _fixed_batch_archive(tmp_path, patched, 2)
    res = cli("eval", path, "--data", root / "data.npz", "--preset", "cifar", "--size", "24", *AUDIT)
    assert_clean_error(res, f"torch.export archive {path} was exported for 3x32x32", "the data is 3x24x24", "--size 32")


def test_run_in_batches_pads_to_the_smallest_and_cuts_at_the_largest():
    from shiftaudit.loading.fixed_batch import run_in_batches

    seen: list[int] = []

    def graph(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape[0])
        return x.sum(dim=(1, 2, 3))[:, None] * torch.tensor([[1.0, 2.0]])

    x = torch.arange(7 * 12, dtype=torch.float32).reshape(7, 3, 2, 2)
    want = graph(x)
    seen.clear()
    assert torch.equal(run_in_batches(graph, x, 3, 3), want) and seen == [3, 3, 3]
    seen.clear()
    assert torch.equal(run_in_batches(graph, x, 1, 4), want) and seen == [4, 3]
    seen.clear()
    assert torch.equal(run_in_batches(graph, x[:1], 2, None), want[:1]) and seen == [2]


# -- hostile mutations of a real archive: nothing runs, nothing hangs --------------------------------------------------

_EXPRESSIONS = [
    "9**9**9",
    "s0**9**9",
    "factorial(10**8)",
    "__import__('os').system('true')",
    "Max(" + "s0, " * 40 + "s0)",
    "Integer(" + "9" * 5000 + ")",
    "Symbol('s0', positive=True, integer=True)",
    "2*s0",
    "(" * 200 + "s0" + ")" * 200,
]


@settings(max_examples=examples(30), deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_hostile_mutations_of_a_real_archive_never_run_code_or_hang(files, tmp_path_factory, data):
    root, _ = files
    members = _members(root / "p.pt2")
    work = tmp_path_factory.mktemp("mut")
    marker = work / "ran"
    bad_config, payload, config_name = _evil(members, marker)
    top = config_name.split("/", 1)[0]
    table = [[name, data_] for name, data_ in members]
    kw: dict = {}
    for _ in range(data.draw(st.integers(1, 4), label="steps")):
        op = data.draw(
            st.sampled_from(["dup", "case", "swap config", "payload", "expr", "sample", "drop", "order", "structure", "sizes"]),
            label="op",
        )
        i = data.draw(st.integers(0, len(table) - 1), label="index")
        if op == "dup":
            table.insert(data.draw(st.integers(0, len(table))), [table[i][0], bad_config])
        elif op == "case":
            table[i][0] = table[i][0].upper()
        elif op == "swap config":
            table = [[n, bad_config if n == config_name else d] for n, d in table]
        elif op == "payload":
            table.append([f"{top}/data/weights/evil", payload])
        elif op == "expr":
            expr = data.draw(st.sampled_from(_EXPRESSIONS), label="expr")
            table = [[n, _with_expr(d, expr) if n.endswith("models/model.json") else d] for n, d in table]
        elif op == "sample":
            table = [[n, payload if n.endswith("sample_inputs/model.pt") else d] for n, d in table]
        elif op == "drop" and len(table) > 1:
            del table[i]
        elif op == "order":
            table.insert(0, table.pop(i))
        elif op == "structure":
            kw.update(
                data.draw(
                    st.sampled_from(
                        [
                            {"prefix": b"PK\x03\x04" * 4},
                            {"count_delta": -1},
                            {"zip64": False},
                            {"locator_offset_delta": -4},
                            {"cd_offset_delta": 8},
                        ]
                    ),
                    label="kw",
                )
            )
        elif op == "sizes":
            table = [[n, _huge_weight(d) if n == config_name else d] for n, d in table]
    path = work / "m.pt2"
    path.write_bytes(zipcraft.build([zipcraft.member(n, d) for n, d in table], **kw))
    start = time.monotonic()
    with contextlib.suppress(CheckpointError):
        load_model(path)
    assert time.monotonic() - start < 10
    assert not marker.exists()


def _with_expr(blob: bytes, expr: str) -> bytes:
    program = json.loads(blob)
    for value in program["graph_module"]["graph"]["tensor_values"].values():
        for dim in value["sizes"]:
            if "as_expr" in dim:
                dim["as_expr"]["expr_str"] = expr
    return json.dumps(program).encode()


def _huge_weight(blob: bytes) -> bytes:
    config = json.loads(blob)
    meta = next(iter(config["config"].values()))["tensor_meta"]
    meta["sizes"] = [{"as_int": 100_000}, {"as_int": 100_000}, {"as_int": 100}]
    meta["strides"] = [{"as_int": 10_000_000}, {"as_int": 100}, {"as_int": 1}]
    return json.dumps(config).encode()


def test_a_payload_smaller_than_the_tensor_it_declares_is_refused_whatever_the_trust(files, tmp_path):
    root, _ = files
    members = _members(root / "p.pt2")
    blob = zipcraft.build(
        [zipcraft.member(n, _huge_weight(d) if n.endswith("model_weights_config.json") else d) for n, d in members]
    )
    bad = tmp_path / "huge.pt2"
    bad.write_bytes(blob)
    for extra in ([], ["--trust-pickle"]):
        assert_clean_error(
            cli("inspect", bad, *extra), "a tensor of 1,000,000,000,000 elements declared over", "damaged or hostile"
        )


@pytest.mark.parametrize(
    "expr", ["9**9**9", "Pow(Integer(10), Integer(1000000))", "Integer(" + "9" * 50 + ")", "Max(" + ", ".join(["s0"] * 5) + ")"]
)
def test_a_shape_expression_too_costly_for_sympy_is_refused_whatever_the_trust(files, tmp_path, expr):
    root, _ = files
    members = _members(root / "p.pt2")
    blob = zipcraft.build([zipcraft.member(n, _with_expr(d, expr) if n.endswith("models/model.json") else d) for n, d in members])
    bad = tmp_path / "bomb.pt2"
    bad.write_bytes(blob)
    start = time.monotonic()
    for extra in ([], ["--trust-pickle"]):
        assert_clean_error(cli("inspect", bad, *extra), "a shape expression too costly to evaluate")
    assert time.monotonic() - start < 10
