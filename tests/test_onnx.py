"""ONNX models end to end: graphs exported in the test from real PyTorch models, audited through onnxruntime and
compared with the PyTorch audit of the same weights (the same predictions at every shift, the same report)."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from shiftaudit.errors import CheckpointError
from shiftaudit.loading import load_model
from shiftaudit.loading.formats import ONNX, sniff_format
from shiftaudit.loading.onnx_model import OnnxClassifier
from tests.helpers import assert_clean_error, assert_one_error_line, cli, nothing_written, run_measured, tiny_cnn

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

SIZE = 32
SHIFT = ["--max-shift", "2", "--device", "cpu", "--workers", "0", "--quiet"]


def export(model: nn.Module, path: Path, example: torch.Tensor, *, free_batch: bool = True, **kw) -> Path:
    """``torch.onnx.export`` with the TorchScript-based exporter: 0.2 s a graph here, against 3-8 s for the dynamo
    exporter (which ``test_dynamo_export_with_external_weights_audits_the_same`` covers, marked slow)."""
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if free_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (example,),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes=axes,
            **kw,
        )
    return path


class ChannelsLast(nn.Module):
    """Takes (N, H, W, C) images, as graphs converted from TensorFlow do."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.permute(0, 3, 1, 2))


class TwoInputs(nn.Module):
    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (x * mask).mean((2, 3))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(num_classes=3).eval()
    torch.save(resnet.state_dict(), root / "r18.pt")
    export(resnet, root / "r18.onnx", torch.zeros(2, 3, SIZE, SIZE))
    rng = np.random.default_rng(0)
    np.savez(root / "data.npz", images=rng.integers(0, 256, (7, SIZE, SIZE, 3), dtype=np.uint8), labels=rng.integers(0, 3, 7))
    return root, resnet


def audit_json(tmp_path: Path, name: str, *args) -> dict:
    report = tmp_path / f"{name}.json"
    res = cli("eval", *args, *SHIFT, "--json", report)
    assert res.exit_code == 0, res.output
    return json.loads(report.read_text())


def assert_same_audit(a: dict, b: dict) -> None:
    """The same keys everywhere and the same numbers (predictions equal; probabilities to float tolerance)."""
    assert a.keys() == b.keys() and a["metrics"].keys() == b["metrics"].keys() and a["per_image"].keys() == b["per_image"].keys()
    assert a["settings"] == b["settings"]

    def close(x, y, path):
        if isinstance(x, dict):
            assert x.keys() == y.keys(), path
            for k in x:
                close(x[k], y[k], f"{path}/{k}")
        elif isinstance(x, list):
            assert len(x) == len(y), path
            for i, (u, v) in enumerate(zip(x, y)):
                close(u, v, f"{path}[{i}]")
        elif isinstance(x, float):
            assert y == pytest.approx(x, abs=1e-5), path
        else:
            assert x == y, path

    close(a["metrics"], b["metrics"], "metrics")
    close(a["per_image"], b["per_image"], "per_image")


def test_onnx_audit_equals_the_pytorch_audit_of_the_same_weights(files, tmp_path):
    root, _ = files
    data = root / "data.npz"
    torch_report = audit_json(tmp_path, "pt", root / "r18.pt", "--arch", "resnet18", "--data", data, "--size", SIZE)
    onnx_report = audit_json(tmp_path, "onnx", root / "r18.onnx", "--data", data)
    assert_same_audit(torch_report, onnx_report)
    assert onnx_report["model"]["format"] == "onnx" and onnx_report["model"]["num_classes"] == 3
    assert onnx_report["model"]["parameters"] > 11_000_000  # the graph's weights (exact count: the inspect test)
    assert onnx_report["settings"]["precision"] == "fp32" and onnx_report["notes"] == torch_report["notes"]


def test_an_onnx_eval_says_what_inspect_says_was_assumed(files, tmp_path):
    """The graph fixes 32x32 and records no mean or std: inspect notes the guess, and so does eval (it used to stay
    silent), until --mean/--std say it. The size gets ImageNet's crop fraction, as --size alone does: resize 36."""
    root, _ = files
    data = root / "data.npz"
    loaded = load_model(root / "r18.onnx")
    assert loaded.preprocessing_assumed and loaded.preprocessing.resize == 36
    assert loaded.notes == [
        "input size 32x32 read from the graph; resize 36 (ImageNet's crop fraction), mean and std "
        "are assumed (pass --preset, --resize or --mean/--std)"
    ]
    inspected = cli("inspect", root / "r18.onnx")
    assert loaded.notes[0] in " ".join(inspected.stdout.split())
    report = audit_json(tmp_path, "guessed", root / "r18.onnx", "--data", data)
    assert report["data"]["preprocessing"]["resize"] == 36
    assumed = [n for n in report["notes"] if "assumed" in n]
    assert assumed == [
        "ImageNet mean/std assumed: the checkpoint records no normalisation and neither --preset nor "
        "--mean/--std was given; pass the model's own (docs/loading.md, finding a model's preprocessing)"
    ]
    given = audit_json(tmp_path, "given", root / "r18.onnx", "--data", data, "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5")
    assert not [n for n in given["notes"] if "assumed" in n]


def test_onnx_model_predicts_what_pytorch_predicts_at_every_shift(files):
    root, resnet = files
    loaded = load_model(root / "r18.onnx")
    assert isinstance(loaded.model, OnnxClassifier) and loaded.num_classes == 3
    assert loaded.preprocessing is not None and loaded.preprocessing.size == (SIZE, SIZE)  # read from the graph
    x = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    shifted = torch.cat([torch.roll(x, (dh, dw), (-2, -1)) for dh in range(-2, 3) for dw in range(-2, 3)])
    with torch.no_grad():
        want = resnet(shifted)
    got = loaded.model(shifted)
    assert got.shape == want.shape == (100, 3)
    assert torch.equal(got.argmax(1), want.argmax(1))
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("batch", [1, 3])
def test_a_fixed_batch_graph_audits_in_chunks_of_its_batch_with_a_note(files, tmp_path, batch):
    """7 images x 25 shifts = 175 rows: batch 1 runs them one at a time, batch 3 in chunks of 3 (the last one padded)."""
    root, _ = files
    torch.manual_seed(2)
    model = tiny_cnn(3, spatial_head=True, size=SIZE).eval()
    fixed = export(model, tmp_path / f"b{batch}.onnx", torch.zeros(batch, 3, SIZE, SIZE), free_batch=False)
    free = export(model, tmp_path / "free.onnx", torch.zeros(2, 3, SIZE, SIZE))
    assert load_model(fixed).model.input.batch == batch
    a = audit_json(tmp_path, "free", free, "--data", root / "data.npz", "--batch-size", "50")
    b = audit_json(tmp_path, "fixed", fixed, "--data", root / "data.npz", "--batch-size", "50")
    assert_same_audit(a, b)
    note = "one row at a time" if batch == 1 else "in chunks of 3"
    assert any(note in n for n in b["notes"]), b["notes"]
    assert not any("ONNX" in n for n in a["notes"])


def test_a_channels_last_graph_is_fed_channels_last(files, tmp_path):
    root, _ = files
    torch.manual_seed(3)
    model = tiny_cnn(3, spatial_head=True, size=SIZE).eval()
    nchw = export(model, tmp_path / "nchw.onnx", torch.zeros(2, 3, SIZE, SIZE))
    nhwc = export(ChannelsLast(model), tmp_path / "nhwc.onnx", torch.zeros(2, SIZE, SIZE, 3))
    assert load_model(nhwc).model.input.layout == "NHWC"
    a = audit_json(tmp_path, "nchw", nchw, "--data", root / "data.npz")
    b = audit_json(tmp_path, "nhwc", nhwc, "--data", root / "data.npz")
    assert_same_audit(a, b)


def test_inspect_reads_the_downsampling_points_from_the_graph(files, tmp_path):
    root, _ = files
    report = tmp_path / "inspect.json"
    res = cli("inspect", root / "r18.onnx", "--json", report)
    assert res.exit_code == 0, res.output
    assert "Read from the ONNX graph" in res.stdout and "needs the PyTorch model" in res.stdout
    insp = json.loads(report.read_text())["inspection"]
    points = [(p["module"], p["kernel"], p["stride"], p["in_size"], p["out_size"], p["role"]) for p in insp["points"]]
    assert points == [  # resnet18 at 32x32: the stem conv, the max pool, and a 3x3 conv + 1x1 shortcut in layers 2-4
        ("Conv", [7, 7], [2, 2], [32, 32], [16, 16], "stem"),
        ("MaxPool", [3, 3], [2, 2], [16, 16], [8, 8], "main"),
        ("Conv", [3, 3], [2, 2], [8, 8], [4, 4], "main"),
        ("Conv", [1, 1], [2, 2], [8, 8], [4, 4], "shortcut"),
        ("Conv", [3, 3], [2, 2], [4, 4], [2, 2], "main"),
        ("Conv", [1, 1], [2, 2], [4, 4], [2, 2], "shortcut"),
        ("Conv", [3, 3], [2, 2], [2, 2], [1, 1], "main"),
        ("Conv", [1, 1], [2, 2], [2, 2], [1, 1], "shortcut"),
    ]
    assert insp["total_stride"] == 32 and insp["final_size"] == [1, 1]
    import onnx

    graph = onnx.load(str(root / "r18.onnx")).graph  # the exporter folds BatchNorm into the convs: count what it kept
    assert insp["parameter_count"] == sum(int(np.prod(t.dims)) for t in graph.initializer) > 11_000_000


def test_the_format_is_read_from_the_content_not_the_name(files, tmp_path):
    root, _ = files
    renamed = tmp_path / "model.bin"
    renamed.write_bytes((root / "r18.onnx").read_bytes())
    assert sniff_format(renamed) == ONNX
    assert load_model(renamed).format == "onnx"


def test_patch_says_it_needs_the_pytorch_model(files, tmp_path):
    root, _ = files
    out = tmp_path / "aa.safetensors"
    res = cli("patch", root / "r18.onnx", "-o", out)
    assert_clean_error(res, "An ONNX model cannot be patched", "needs the PyTorch model")
    assert nothing_written(out)


BAD_SETTINGS = [
    (["--layers", "auto"], "Per-layer feature distances hook PyTorch modules"),
    (["--precision", "bf16"], "--precision bf16 does not apply to an ONNX model"),
    (["--size", "40"], "takes 32x32 images but the data is 40x40; pass --size 32"),
]


@pytest.mark.parametrize("extra, needle", BAD_SETTINGS, ids=["layers", "bf16", "size"])
def test_settings_an_onnx_graph_cannot_take_are_one_sentence_before_any_work(files, tmp_path, extra, needle):
    root, _ = files
    report = tmp_path / "r.json"
    res = cli("eval", root / "r18.onnx", "--data", root / "data.npz", *SHIFT, "--json", report, *extra)
    assert_clean_error(res, needle)
    assert nothing_written(report)


def test_compile_is_not_applied_to_an_onnx_graph_and_the_plan_says_so(files, tmp_path):
    root, _ = files
    plan = tmp_path / "plan.json"
    res = cli("eval", root / "r18.onnx", "--data", root / "data.npz", *SHIFT, "--compile", "--dry-run", "--json", plan)
    assert res.exit_code == 0, res.output
    planned = json.loads(plan.read_text())["plan"]
    assert planned["compile"] is False and planned["device"] == "cpu" and planned["engine"] == "dense"
    assert any("--compile does not apply to an ONNX graph" in n for n in planned["notes"])


def _graphs_that_are_not_classifiers(tmp_path: Path) -> list[tuple[Path, str]]:
    x = torch.zeros(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(TwoInputs(), (x, x), str(tmp_path / "two.onnx"), dynamo=False, input_names=["image", "mask"])
    features = export(nn.Conv2d(3, 4, 3), tmp_path / "features.onnx", x)
    flat = export(nn.Linear(8, 3), tmp_path / "flat.onnx", torch.zeros(2, 8))
    return [
        (tmp_path / "two.onnx", "it takes 2 inputs (image, mask), expected one image batch"),
        (features, "its output logits has shape ['batch', 4, 6, 6], expected class scores (N, classes)"),
        (flat, "its input input has shape ['batch', 8], expected a 4-D image batch"),
    ]


def test_graphs_that_are_not_image_classifiers_are_refused_in_one_sentence(files, tmp_path):
    root, _ = files
    for graph, needle in _graphs_that_are_not_classifiers(tmp_path):
        res = cli("eval", graph, "--data", root / "data.npz", *SHIFT)
        assert_clean_error(res, f"ONNX model {graph} is not an image classifier", needle)


def test_a_damaged_onnx_file_is_one_sentence(files, tmp_path):
    root, _ = files
    data = (root / "r18.onnx").read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    assert_clean_error(cli("eval", cut, "--data", root / "data.npz", *SHIFT), f"ONNX model {cut} cannot be loaded by onnxruntime")
    at = data.index(b"\x05group") + 1  # a Conv attribute's name: a string, which must be UTF-8
    flipped = tmp_path / "flipped.onnx"
    flipped.write_bytes(data[:at] + b"\xc1" + data[at + 1 :])
    res = cli("inspect", flipped)
    assert_clean_error(res, f"ONNX model {flipped} cannot be loaded by onnxruntime", "invalid start byte")
    assert "EP Error" not in res.output  # onnxruntime's banner before its retry stays hidden
    text = tmp_path / "notes.onnx"
    text.write_text("not a graph\n")
    assert_clean_error(cli("inspect", text), f"{text} is not a valid ONNX model")


def test_without_onnxruntime_the_error_names_the_extra(files, monkeypatch):
    root, _ = files
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    with pytest.raises(CheckpointError, match=r"needs onnxruntime: pip install 'shiftaudit\[onnx\]'"):
        load_model(root / "r18.onnx")


@pytest.mark.slow
def test_dynamo_export_with_external_weights_audits_the_same(files, tmp_path):
    """What torch 2.14's default exporter writes for a resnet: the graph in .onnx, the weights in .onnx.data beside it."""
    pytest.importorskip("onnxscript")
    root, resnet = files
    path = tmp_path / "dynamo.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            resnet,
            (torch.zeros(2, 3, SIZE, SIZE),),
            str(path),
            dynamo=True,
            verbose=False,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
        )
    assert path.with_suffix(".onnx.data").is_file()
    data = root / "data.npz"
    torch_report = audit_json(tmp_path, "pt", root / "r18.pt", "--arch", "resnet18", "--data", data, "--size", SIZE)
    assert_same_audit(torch_report, audit_json(tmp_path, "dynamo", path, "--data", data))


def test_shiftaudit_metadata_in_the_graph_is_read_like_a_checkpoints(files, tmp_path):
    import onnx

    root, _ = files
    graph = onnx.load(str(root / "r18.onnx"))
    prep = {"size": [SIZE, SIZE], "mean": [0.5] * 3, "std": [0.25] * 3, "name": "custom"}
    for key, value in {"shiftaudit.preprocessing": json.dumps(prep), "shiftaudit.class_names": '["a", "b", "c"]'}.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(graph, str(tmp_path / "meta.onnx"))
    loaded = load_model(tmp_path / "meta.onnx")
    assert loaded.class_names == ["a", "b", "c"] and loaded.preprocessing.mean == (0.5, 0.5, 0.5)
    assert loaded.notes == []  # no size assumed: the metadata said it


def test_on_a_cuda_machine_auto_runs_the_graph_on_the_cpu_and_cuda_is_refused(files):
    """No GPU is needed: the plan asks the model which device it runs on, given the device the audit resolved."""
    from shiftaudit.engine.config import AuditConfig
    from shiftaudit.errors import UsageError

    root, _ = files
    model = load_model(root / "r18.onnx").model
    notes: list[str] = []
    cuda = torch.device("cuda")
    assert model.plan_settings(AuditConfig(device="auto"), cuda, 3, (SIZE, SIZE), notes) == torch.device("cpu")
    with pytest.raises(UsageError, match="ONNX models run on the CPU through onnxruntime; use --device cpu, not cuda"):
        model.plan_settings(AuditConfig(device="cuda"), cuda, 3, (SIZE, SIZE), notes)
    with pytest.raises(UsageError, match="takes 3-channel images but the data has 1 channels"):
        model.plan_settings(AuditConfig(device="cpu"), torch.device("cpu"), 1, (SIZE, SIZE), notes)


# -- declared sizes: a graph of a few hundred bytes must not make onnxruntime allocate what it declares -----------------


def _classifier(path: Path, inits: list, nodes: list, feeds: str, sparse: list | None = None, small: bool = True) -> Path:
    """A tiny image classifier (global pool -> 3 scores) plus ``feeds`` summed into its logits: what a hostile graph
    needs to be taken for a classifier while it declares the tensors under test."""
    from onnx import TensorProto, helper

    tail = [
        helper.make_node("ReduceSum", [feeds], ["s"], keepdims=0),
        helper.make_node("GlobalAveragePool", ["x"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Add", ["f", "s"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes + tail,
        "crafted",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        inits,
        sparse_initializer=sparse or [],
    )
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString())
    assert path.stat().st_size < 2048 or not small
    return path


def _declared(name: str, dims: list[int], raw: bytes = b"", **external: str):
    import onnx

    t = onnx.TensorProto(name=name, data_type=onnx.TensorProto.FLOAT, dims=dims)
    if external:
        t.data_location = onnx.TensorProto.EXTERNAL
        for key, value in external.items():
            t.external_data.add(key=key, value=value)
    else:
        t.raw_data = raw
    return t


def _built_from_constants(path: Path, op: str, side: int) -> Path:
    """``op`` (ConstantOfShape, Expand, Tile) of constants making a side x side float tensor: what constant folding
    would build while onnxruntime creates the session."""
    from onnx import helper, numpy_helper

    shape = numpy_helper.from_array(np.array([side, side], np.int64), "shape")
    one = numpy_helper.from_array(np.ones((1, 1), np.float32), "one")
    node = (
        helper.make_node("ConstantOfShape", ["shape"], ["big"], value=numpy_helper.from_array(np.ones(1, np.float32)))
        if op == "ConstantOfShape"
        else helper.make_node(op, ["one", "shape"], ["big"])
    )
    return _classifier(path, [shape, one], [node], "big")


def _crafted_graphs(tmp: Path) -> list[tuple[Path, tuple[str, ...]]]:
    """Each hostile graph and the words of its refusal. The constant-building ones declare 256 MiB: without the
    check, onnxruntime would build it in this very process; the real-process test below declares 16 GiB."""
    from onnx import TensorProto, helper

    (tmp / "small.bin").write_bytes(b"\0" * 100)
    (tmp / "zero.bin").symlink_to("/dev/zero")
    os.mkfifo(tmp / "fifo.bin")
    sparse = helper.make_sparse_tensor(
        helper.make_tensor("sv", TensorProto.FLOAT, [1], [1.0]),
        helper.make_tensor("si", TensorProto.INT64, [1, 2], [0, 0]),
        [8192, 8192],
    )
    chain = [helper.make_node("Relu", [f"v{i}"], [f"v{i + 1}"]) for i in range(9_997)]  # + the classifier's 4: 10,001
    many = _classifier(tmp / "many.onnx", [_declared("v0", [1], b"\0" * 4)], chain, "v9997", small=False)
    return [
        (
            _classifier(tmp / "short.onnx", [_declared("w", [65536, 65536], b"\0" * 4)], [], "w"),
            ("is damaged", "initializer 'w' declares 17,179,869,184 bytes (shape [65536, 65536]) but holds 4"),
        ),
        (
            _classifier(tmp / "short1g.onnx", [_declared("w", [16384, 16384], b"\0" * 4)], [], "w"),
            ("is damaged", "declares 1,073,741,824 bytes"),
        ),
        (
            _classifier(tmp / "devzero.onnx", [_declared("w", [4096, 4096], location="/dev/zero")], [], "w"),
            ("refers to external data '/dev/zero'", "not a file inside the model's folder"),
        ),
        (
            _classifier(tmp / "escape.onnx", [_declared("w", [2, 2], location="../../etc/passwd")], [], "w"),
            ("refers to external data '../../etc/passwd'",),
        ),
        (
            _classifier(tmp / "link.onnx", [_declared("w", [4096, 4096], location="zero.bin")], [], "w"),
            ("a link to /dev/zero outside the model's folder",),
        ),
        (_classifier(tmp / "fifo.onnx", [_declared("w", [4096, 4096], location="fifo.bin")], [], "w"), ("not a regular file",)),
        (
            _classifier(tmp / "past_end.onnx", [_declared("w", [4096, 4096], location="small.bin")], [], "w"),
            ("is damaged", "declares 67,108,864 bytes of external data at offset 0 of small.bin, which holds 100 bytes"),
        ),
        (
            _classifier(tmp / "sparse.onnx", [], [helper.make_node("Identity", ["sv"], ["sd"])], "sd", sparse=[sparse]),
            ("is too large", "sparse tensor of shape [8192, 8192] that onnxruntime would expand to 256 MiB"),
        ),
        (
            _built_from_constants(tmp / "cos.onnx", "ConstantOfShape", 8192),
            ("is too large", "ConstantOfShape node", "shape [8192, 8192] (256 MiB) from constants"),
        ),
        (_built_from_constants(tmp / "expand.onnx", "Expand", 8192), ("is too large", "Expand node")),
        (_built_from_constants(tmp / "tile.onnx", "Tile", 8192), ("is too large", "Tile node")),
        (many, ("is too large", "10,001 nodes, more than the 10,000 allowed")),
    ]


def test_sizes_a_graph_declares_are_checked_against_its_data_before_onnxruntime_sees_it(files, tmp_path):
    """Each crafted graph: exit 2, one sentence naming the file as damaged or too large, no report."""
    root, _ = files
    out = tmp_path / "r.json"
    for graph, needles in _crafted_graphs(tmp_path):
        res = cli("eval", graph, "--data", root / "data.npz", "--size", 8, *SHIFT, "--json", out)
        assert_clean_error(res, f"ONNX model {graph}", *needles)
        assert nothing_written(out)


@pytest.mark.slow
def test_a_graph_that_would_fold_16_gib_ends_in_seconds_and_little_memory_in_a_real_process(files, tmp_path):
    """The 1-KB graphs of the issue, in a real process: a ConstantOfShape of [65536, 65536] and an initializer
    declaring 16 GiB with 4 bytes of data. Peak memory is the child's own (torch alone takes ~0.7 GB)."""
    root, _ = files
    for graph, needle in [
        (_built_from_constants(tmp_path / "fold.onnx", "ConstantOfShape", 65536), "16.0 GiB"),
        (
            _classifier(tmp_path / "short.onnx", [_declared("w", [65536, 65536], b"\0" * 4)], [], "w"),
            "declares 17,179,869,184 bytes",
        ),
    ]:
        code, stderr, startups, peak = run_measured("eval", graph, "--data", root / "data.npz", "--size", 8, *SHIFT)
        assert code == 2
        assert_one_error_line(stderr, f"ONNX model {graph}", needle)
        assert startups < 4 and peak < 1 << 30, (startups, peak)  # time in start-ups of the CLI itself


def test_constant_folding_is_off_so_session_creation_builds_nothing(files, tmp_path, monkeypatch):
    """Even a graph the size check would let through (here the check is bypassed) makes onnxruntime build nothing at
    session creation: resident memory does not grow by the 256 MiB that folding would build."""
    import shiftaudit.loading.onnx_check as check
    from shiftaudit.loading.onnx_model import read_onnx

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    from onnx import TensorProto, helper, numpy_helper

    monkeypatch.setattr(check, "check_onnx_file", lambda path: True)
    shape = numpy_helper.from_array(np.array([8192, 8192], np.int64), "shape")
    nodes = [  # the rows of `big` are gathered by an input-dependent index: folded, `big` stays in the session
        helper.make_node("ConstantOfShape", ["shape"], ["big"], value=numpy_helper.from_array(np.ones(1, np.float32))),
        helper.make_node("GlobalAveragePool", ["x"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("ArgMax", ["f"], ["i"], axis=1, keepdims=0),
        helper.make_node("Gather", ["big", "i"], ["rows"]),
        helper.make_node("ReduceMax", ["rows"], ["m"], axes=[1], keepdims=1),
        helper.make_node("Add", ["f", "m"], ["logits"]),
    ]
    g = helper.make_graph(
        nodes,
        "fold",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [shape],
    )
    graph = tmp_path / "fold.onnx"
    graph.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString())
    before = rss()
    model, _, _ = read_onnx(graph)
    assert rss() - before < 128 << 20
    assert model(torch.zeros(2, 3, 8, 8)).shape == (2, 3)  # the graph still runs: `big` is built at run time instead


@pytest.mark.slow
def test_onnxruntimes_own_log_lines_never_reach_the_terminal(files, tmp_path):
    """onnxruntime writes its C++ log to file descriptor 2, past Python: a graph that fails at run time (a Reshape
    that does not fit the batch) must leave one 'error:' line on a real process's stderr, not ORT's lines too."""
    from onnx import TensorProto, helper, numpy_helper

    root, _ = files
    shape = numpy_helper.from_array(np.array([4, -1], np.int64), "shape")
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Reshape", ["f", "shape"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [shape],
    )
    path = tmp_path / "reshape.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString())
    code, stderr, _, _ = run_measured("eval", path, "--data", root / "data.npz", "--size", 8, *SHIFT, "--batch-size", 7)
    assert code == 2
    assert_one_error_line(stderr, "The model failed on a batch", "onnxruntime failed")
    assert "[E:onnxruntime" not in stderr
