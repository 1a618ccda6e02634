"""Bad input through the real CLI: every row is one clear sentence, exit code 2, and no output file left behind.

A user points ``shiftaudit`` at files they did not make. Each row below writes real files in a temporary folder,
runs ``eval`` (or ``inspect``/``patch``) the way a user would, and checks the contract of ``handle_errors``: exactly
one line on stderr that starts with ``error:``, no traceback, no "internal error", exit code 2, and nothing written
where ``--json``/``--out``/``-o`` pointed. Rows where the tool can carry on (unreadable images skipped, colour modes
converted, NaN outputs left out) check that it says so instead. The untrusted-file tests at the end check that a
file can never make us run its code without ``--trust-pickle``/``--arch``.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from tests.helpers import (
    assert_clean_error,
    cli,
    nothing_written,
    write_image_folder,
    write_images,
    write_models_module,
)

MODULE = "sa_badinput_models"
TINY = f"{MODULE}:tiny"


@dataclass
class Files:
    root: Path
    pt: Path
    safetensors: Path
    torchscript: Path
    data: Path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory):
    """A 3-class tiny model saved three ways, a 16x16 ImageFolder, and the models module on sys.path."""
    root = tmp_path_factory.mktemp("bad-input")
    write_models_module(root / "pkgs", MODULE)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(root / "pkgs"))
        # identification's signature cache: one per test session (shared with the loading tests), never ~/.cache
        mp.setenv("SHIFTAUDIT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "shiftaudit-cache"))
        mod = __import__(MODULE)
        torch.manual_seed(0)
        model = mod.tiny(3).eval()
        pt = root / "tiny.pt"
        torch.save(model.state_dict(), pt)
        st = root / "tiny.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, st)
        ts = root / "tiny.torchscript.pt"
        torch.jit.script(model).save(str(ts))
        data = write_image_folder(root / "val")
        yield Files(root, pt, st, ts, data)
    sys.modules.pop(MODULE, None)


def eval_args(files: Files, *extra: Any, model: Any = None, data: Any = None, arch: str | None = TINY) -> list[Any]:
    args: list[Any] = ["eval", model if model is not None else files.pt]
    if arch:
        args += ["--arch", arch]
    args += ["--data", data if data is not None else files.data, "--size", "16", "--max-shift", "2", "--device", "cpu",
             "--workers", "0", *extra]
    return args


# ---------------------------------------------------------------------------------------------------------------
# The table: (id, build(files, tmp) -> CLI args, needles the one stderr sentence must contain)
# ---------------------------------------------------------------------------------------------------------------


def _truncated(src: Path, dest: Path, keep: float = 0.5) -> Path:
    data = src.read_bytes()
    dest.write_bytes(data[: int(len(data) * keep)])
    return dest


def _torchscript_with_broken_code(src: Path, dest: Path) -> Path:
    """A TorchScript zip that opens fine but whose code member is garbage (a damaged member, not a cut file)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if "/code/" in info.filename and info.filename.endswith(".py"):
                data = b"def forward(self, x:\n  return ))) garbage\n"
            zout.writestr(info, data)
    return dest


def _safetensors_with_metadata(src: Path, dest: Path, metadata: dict[str, str]) -> Path:
    from safetensors.torch import load_file

    save_file(load_file(str(src)), str(dest), metadata=metadata)
    return dest


def _text(dest: Path) -> Path:
    dest.write_text("this is a README, not a model\n")
    return dest


def _png(dest: Path) -> Path:
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(dest, format="PNG")
    return dest


def _wrong_arch_state_dict(dest: Path) -> Path:
    torch.save({"encoder.weight": torch.zeros(4, 3), "decoder.weight": torch.zeros(3, 4)}, dest)
    return dest


def _five_class_folder(tmp: Path) -> Path:
    return write_image_folder(tmp / "five", classes=5, per_class=1)


def _empty_folder(tmp: Path) -> Path:
    (tmp / "empty").mkdir()
    return tmp / "empty"


def _tensor_labels(tmp: Path, labels: list[int]) -> Path:
    path = tmp / "data.npz"
    images = np.random.default_rng(0).integers(0, 255, (len(labels), 16, 16, 3), dtype=np.uint8)
    np.savez(path, images=images, labels=np.asarray(labels))
    return path


def _corrupt_only(tmp: Path) -> Path:
    d = tmp / "corrupt" / "class_0"
    d.mkdir(parents=True)
    (d / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (d / "b.jpg").write_bytes(b"")
    return tmp / "corrupt"


def _unlabelled(tmp: Path) -> Path:
    write_images(tmp / "loose", 3)
    return tmp / "loose"


def _small_images(tmp: Path) -> Path:
    return write_image_folder(tmp / "small", size=8)


def _fifo(dest: Path) -> Path:
    os.mkfifo(dest)  # reading it would block forever: it must be refused before it is opened
    return dest


def _deep_class_map(tmp: Path) -> Path:
    path = tmp / "map.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    return path


def _class_map(tmp: Path, text: str) -> Path:
    path = tmp / "map.json"
    path.write_text(text)
    return path


def _strings_npz(tmp: Path) -> Path:
    path = tmp / "words.npz"
    np.savez(path, images=np.array([["a", "b"]] * 4))
    return path


def _file_as_parent(tmp: Path) -> Path:
    (tmp / "afile").write_text("x")
    return tmp / "afile" / "report.json"


Build = Callable[[Files, Path], list[Any]]

ROWS: list[tuple[str, Build, tuple[str, ...]]] = [
    ("missing file", lambda f, t: eval_args(f, model=t / "nope.pt"), ("does not exist", "nope.pt")),
    ("directory instead of file", lambda f, t: eval_args(f, model=f.root), ("is a directory",)),
    ("truncated .pt", lambda f, t: eval_args(f, model=_truncated(f.pt, t / "cut.pt")), ("truncated or corrupt",)),
    (
        "truncated .safetensors",
        lambda f, t: eval_args(f, model=_truncated(f.safetensors, t / "cut.safetensors")),
        ("safetensors",),
    ),
    (
        "truncated TorchScript",
        lambda f, t: eval_args(f, model=_truncated(f.torchscript, t / "cut.ts"), arch=None),
        ("truncated or corrupt",),
    ),
    (
        "TorchScript with damaged code",
        lambda f, t: eval_args(f, model=_torchscript_with_broken_code(f.torchscript, t / "bad.ts"), arch=None),
        ("TorchScript archive", "cannot be loaded"),
    ),
    ("text file as model", lambda f, t: eval_args(f, model=_text(t / "model.pt")), ("not a model checkpoint", "text file")),
    ("PNG as model", lambda f, t: eval_args(f, model=_png(t / "model.pth")), ("not a model checkpoint", "PNG image")),
    (
        "safetensors metadata not JSON",
        lambda f, t: eval_args(
            f,
            model=_safetensors_with_metadata(f.safetensors, t / "m.safetensors", {"shiftaudit.arch_kwargs": "{oops"}),
            arch=None,
        ),
        ("malformed metadata", "shiftaudit.arch_kwargs", "not valid JSON"),
    ),
    (
        "safetensors metadata of the wrong type",
        lambda f, t: eval_args(
            f,
            model=_safetensors_with_metadata(f.safetensors, t / "m.safetensors", {"shiftaudit.num_classes": "three"}),
            arch=None,
        ),
        ("malformed metadata", "not an integer"),
    ),
    (
        "state dict for another architecture",
        lambda f, t: eval_args(f, model=_wrong_arch_state_dict(t / "other.pt"), arch="resnet18"),
        ("does not fit resnet18", "missing", "conv1.weight", "unexpected", "encoder.weight"),
    ),
    ("checkpoint is a pipe", lambda f, t: eval_args(f, model=_fifo(t / "pipe.pt")), ("not a regular file",)),
    ("arch unknown", lambda f, t: eval_args(f, arch="resnet19"), ("Unknown architecture 'resnet19'", "did you mean", "resnet18")),
    (
        "arch factory module missing",
        lambda f, t: eval_args(f, arch="no_such_pkg.models:net"),
        ("Cannot import module 'no_such_pkg.models'",),
    ),
    ("num-classes flag vs checkpoint", lambda f, t: eval_args(f, "--num-classes", "5"), ("3 classes", "--num-classes")),
    (
        "more label folders than classes",
        lambda f, t: eval_args(f, data=_five_class_folder(t)),
        ("Labels go up to 4", "3 classes", "--class-map"),
    ),
    (
        "labels outside the classes",
        lambda f, t: eval_args(f, data=_tensor_labels(t, [0, 1, 7])),
        ("Labels go up to 7", "3 classes"),
    ),
    ("negative labels", lambda f, t: eval_args(f, data=_tensor_labels(t, [0, -2, 1])), ("Labels must be class indices >= 0",)),
    ("empty data folder", lambda f, t: eval_args(f, data=_empty_folder(t)), ("No images found",)),
    ("data is a pipe", lambda f, t: eval_args(f, data=_fifo(t / "data.npz")), ("neither a regular file nor a folder",)),
    (
        "class map nested too deeply",
        lambda f, t: eval_args(f, "--class-map", _deep_class_map(t)),
        ("Class map", "nested too deeply"),
    ),
    ("data path missing", lambda f, t: eval_args(f, data=t / "nowhere"), ("Data path", "does not exist")),
    ("only unreadable images", lambda f, t: eval_args(f, data=_corrupt_only(t)), ("None of the 2 images could be read",)),
    (
        "unreadable image with --strict",
        lambda f, t: eval_args(f, "--strict", data=_corrupt_folder(t)),
        ("Cannot read image", "broken.png", "--strict"),
    ),
    (
        "max shift beyond the image",
        lambda f, t: [
            "eval",
            f.pt,
            "--arch",
            TINY,
            "--data",
            _small_images(t),
            "--size",
            "8",
            "--max-shift",
            "20",
            "--device",
            "cpu",
            "--workers",
            "0",
        ],
        ("--max-shift 20", "8x8", "--max-shift 4"),
    ),
    ("all-inf logits", lambda f, t: eval_args(f, arch=f"{MODULE}:inf_everywhere"), ("NaN or infinite", "every image")),
    (
        "output is a feature map",
        lambda f, t: eval_args(f, arch=f"{MODULE}:feature_map"),
        ("output has shape", "(batch, classes)"),
    ),
    ("sampled mode with layers", lambda f, t: eval_args(f, "--mode", "sampled", "--layers", "auto"), ("--mode exhaustive",)),
    (
        "min-accuracy on unlabelled data",
        lambda f, t: eval_args(f, "--min-accuracy", "0.5", data=_unlabelled(t)),
        ("--min-accuracy", "needs labelled data"),
    ),
    ("fp16 on the CPU", lambda f, t: eval_args(f, "--precision", "fp16"), ("fp16", "CUDA")),
    (
        "class map on a flat folder",
        lambda f, t: eval_args(f, "--class-map", f.root / "map.json", data=_unlabelled(t)),
        ("class map",),
    ),
    ("raw with image files", lambda f, t: eval_args(f, "--raw"), ("--raw",)),
    ("junit without a threshold", lambda f, t: eval_args(f, "--junit", t / "j.xml"), ("--junit",)),
    ("bad --mean", lambda f, t: eval_args(f, "--mean", "a,b,c"), ("--mean",)),
    ("json path under a regular file", lambda f, t: eval_args(f, "--json", _file_as_parent(t)), ("afile", "not a folder")),
    ("json path in /proc", lambda f, t: eval_args(f, "--json", "/proc/shiftaudit-x.json"), ("/proc/shiftaudit-x.json",)),
    ("json path is a directory", lambda f, t: eval_args(f, "--json", t), ("is a folder",)),
    ("out folder is a file", lambda f, t: eval_args(f, "--out", _file_as_parent(t).parent), ("afile", "not a folder")),
    (
        "size below the network's stride",
        lambda f, t: eval_args(f, "--size", "1", "--max-shift", "0"),
        ("cannot run on 1x1 inputs", "total stride is 2", "--size 2"),
    ),
    ("shift step inf", lambda f, t: eval_args(f, "--shift-step", "inf"), ("--shift-step must be a finite number",)),
    ("a million pairs", lambda f, t: eval_args(f, "--pairs", "1000000"), ("--pairs 1000000", "4,096")),
    (
        "crop canvas beyond memory",
        lambda f, t: eval_args(f, "--shift-mode", "crop", "--max-shift", "5000"),
        ("--max-shift 5000", "10016x10016", "GiB per image", "--max-shift 2040"),
    ),
    (
        "class map index 1e20",
        lambda f, t: eval_args(f, "--class-map", _class_map(t, '{"class_0": 0, "class_1": 1e20, "class_2": 2}')),
        ("1e+20, not a whole class index",),
    ),
    (
        "class map index true",
        lambda f, t: eval_args(f, "--class-map", _class_map(t, '{"class_0": 0, "class_1": true, "class_2": 2}')),
        ("true, not a whole class index",),
    ),
    ("tensor file of strings", lambda f, t: eval_args(f, data=_strings_npz(t)), ("Images must be numbers, not strings",)),
    ("NaN --mean", lambda f, t: eval_args(f, "--mean", "nan,0,0"), ("--mean", "finite")),
    ("resume path is a folder", lambda f, t: eval_args(f, "--resume", t), ("is a folder; pass a file path",)),
    ("inspect a missing file", lambda f, t: ["inspect", t / "nope.pt"], ("does not exist",)),
    ("inspect a text file", lambda f, t: ["inspect", _text(t / "notes.safetensors")], ("safetensors",)),
    (
        "patch a TorchScript archive",
        lambda f, t: ["patch", f.torchscript, "-o", t / "p.safetensors"],
        ("TorchScript", "cannot be patched"),
    ),
    (
        "patch --dry-run with -o",
        lambda f, t: ["patch", f.pt, "--arch", TINY, "--dry-run", "-o", t / "p.safetensors"],
        ("--dry-run",),
    ),
    (
        "patch output under a regular file",
        lambda f, t: ["patch", f.pt, "--arch", TINY, "--size", "16", "-o", _file_as_parent(t).parent / "p.safetensors"],
        ("afile", "not a folder"),
    ),
]


def _corrupt_folder(tmp: Path) -> Path:
    """Good images plus one corrupt PNG and one non-image file."""
    root = write_image_folder(tmp / "mixed")
    (root / "class_0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    (root / "class_1" / "notes.txt").write_text("not an image")
    return root


@pytest.mark.parametrize("build, needles", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input_is_one_sentence_exit_2_and_no_output(files, tmp_path, build, needles):
    args = build(files, tmp_path)
    report = tmp_path / "out" / "report.json"
    if args[0] == "eval" and "--json" not in args and "--out" not in args:
        args += ["--json", report, "--out", tmp_path / "outdir"]
    targets = [Path(str(args[args.index(flag) + 1])) for flag in ("--json", "-o", "--out") if flag in args]
    fresh = [t for t in targets if not t.exists()]  # the rows that point at an existing file or folder on purpose
    res = cli(*args)
    assert_clean_error(res, *needles)
    assert nothing_written(report)
    assert not (tmp_path / "outdir").exists() or not any((tmp_path / "outdir").iterdir())
    for target in fresh:
        assert not target.exists() and (not target.parent.is_dir() or nothing_written(target)), f"{target} left behind"


BAD_CHOICES = [
    ("eval", "--mode", "fast", "'auto', 'exhaustive', 'sampled'"),
    ("eval", "--shift-mode", "sideways", "'circular', 'crop', 'subpixel'"),
    ("eval", "--precision", "fp8", "'fp32', 'bf16', 'fp16'"),
    ("eval", "--data-kind", "video", "'auto', 'imagefolder', 'folder', 'cifar10', 'tensors', 'hf', 'webdataset'"),
    ("eval", "--preset", "mnist", "'imagenet', 'cifar'"),
    ("patch", "--method", "antialias", "'blurpool', 'aps'"),
    ("patch", "--pad", "mirror", "'reflect', 'zero', 'circular', 'replicate'"),
    ("patch", "--format", "onnx", "'safetensors', 'pt2', 'torchscript'"),
]


@pytest.mark.parametrize("command, flag, bad, choices", BAD_CHOICES, ids=[r[1] for r in BAD_CHOICES])
def test_a_value_outside_an_options_choices_is_exit_2_naming_the_option_and_its_choices(
    files, tmp_path, command, flag, bad, choices
):
    """Typer refuses it before any work: the first stderr line names the option, the value and every choice; the
    choices are also listed in --help."""
    report = tmp_path / "r.json"
    args = eval_args(files, flag, bad) if command == "eval" else ["patch", files.pt, "--arch", TINY, flag, bad]
    res = cli(*args, "--json", report)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines[0] == f"error: Invalid value for '{flag}': '{bad}' is not one of {choices}.", lines[0]
    assert "Traceback" not in res.output
    assert nothing_written(report)
    help_text = " ".join(cli(command, "--help").stdout.split())
    assert all(choice.strip("'") in help_text for choice in choices.split(", "))


# ---------------------------------------------------------------------------------------------------------------
# Rows where the audit carries on, and says what it did
# ---------------------------------------------------------------------------------------------------------------


def _run_ok(args: list[Any], report: Path) -> dict[str, Any]:
    res = cli(*args, "--json", report)
    assert res.exit_code == 0, f"{res.stdout}\n{res.stderr}\n{res.exception!r}"
    assert "Traceback" not in res.output
    return {"res": res, "report": json.loads(report.read_text())}


@pytest.mark.parametrize("workers", ["0", "1"])
def test_unreadable_and_non_image_files_are_skipped_with_a_count(files, tmp_path, workers):
    data = _corrupt_folder(tmp_path)
    args = [a if a != "0" else workers for a in eval_args(files, data=data)]  # decoded here, or in a worker process
    out = _run_ok(args, tmp_path / "r.json")
    notes = out["report"]["notes"]
    assert any("1 unreadable image skipped: broken.png" in n for n in notes), notes
    assert out["report"]["data"]["num_images"] == 6  # the 6 good ones; notes.txt is not an image at all
    assert "1 unreadable image skipped" in out["res"].stdout


def test_symlink_loop_in_the_data_folder_is_walked_once(files, tmp_path):
    root = write_image_folder(tmp_path / "loopy")
    (root / "class_0" / "again").symlink_to(root, target_is_directory=True)
    out = _run_ok(eval_args(files, data=root), tmp_path / "r.json")
    assert out["report"]["data"]["num_images"] == 6


def test_grayscale_and_rgba_images_are_converted_and_said(files, tmp_path):
    root = tmp_path / "modes"
    write_images(root / "class_0", 2, mode="L")
    write_images(root / "class_1", 2, mode="RGBA")
    write_images(root / "class_2", 2, mode="RGB")
    out = _run_ok(eval_args(files, data=root), tmp_path / "r.json")
    assert any("converted 4 images with another colour mode to RGB" in n for n in out["report"]["notes"])


def test_images_smaller_than_the_crop_are_enlarged_and_said(files, tmp_path):
    # --preset cifar: a crop without a resize (a --size alone resizes to 16 / 0.875 = 18 px first, enlarging them)
    out = _run_ok(eval_args(files, "--preset", "cifar", data=_small_images(tmp_path)), tmp_path / "r.json")
    assert any("6 images smaller than the 16x16 crop enlarged" in n for n in out["report"]["notes"])


def test_nan_logits_are_counted_and_left_out_never_averaged(files, tmp_path):
    root = tmp_path / "nan"
    write_images(root / "class_0", 2, lo=230, hi=255, prefix="bright")  # NaN at every shift
    write_images(root / "class_1", 2, lo=0, hi=40, seed=1)
    write_images(root / "class_2", 2, lo=0, hi=40, seed=2)
    out = _run_ok(eval_args(files, arch=f"{MODULE}:nan_on_bright", data=root), tmp_path / "r.json")
    rep = out["report"]
    assert rep["data"]["nonfinite_images"] == 2 and rep["data"]["num_images"] == 6
    assert any("2 of 6 images gave NaN or infinite outputs" in n for n in rep["notes"])
    assert len(rep["per_image"]["image_id"]) == 4  # the metrics saw only the finite images
    cons = rep["metrics"]["consistency"]["exact"]["value"]
    assert cons == cons  # a number, not NaN
    assert "NaN or infinite" in out["res"].stdout


# ---------------------------------------------------------------------------------------------------------------
# Untrusted files
# ---------------------------------------------------------------------------------------------------------------


class _Evil:
    """Unpickling this runs ``open(marker, 'w')``: proof of code execution if the marker appears."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.marker, "w"))


def test_pickled_checkpoint_is_never_unpickled_without_trust_pickle(files, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {"fc.weight": torch.zeros(3, 8)}, "payload": _Evil(str(marker))}, evil)
    for legacy in (False, True):
        path = evil if not legacy else tmp_path / "evil_legacy.pt"
        if legacy:
            torch.save({"payload": _Evil(str(marker))}, path, _use_new_zipfile_serialization=False)
        res = cli(*eval_args(files, "--json", tmp_path / "r.json", model=path))
        line = assert_clean_error(res, "--trust-pickle", "runs code")
        assert "pickled Python object" in line
        assert not marker.exists(), "the pickle ran code without --trust-pickle"
        res = cli("inspect", path)
        assert_clean_error(res, "--trust-pickle")
        assert not marker.exists()


def test_trust_pickle_is_what_allows_full_unpickling(files, tmp_path):
    """The flag really is the gate: with it, the same file is unpickled (here: the marker is written)."""
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"model": _Evil(str(marker))}, path)
    res = cli("inspect", path, "--trust-pickle")
    assert marker.exists()
    assert res.exit_code == 2 and "Traceback" not in res.output  # a file handle is no model: still a clean error


def test_metadata_factory_outside_shiftaudit_is_not_imported(files, tmp_path, monkeypatch):
    """A safetensors file naming ``evilmod:build`` must not import evilmod; the user has to pass --arch themselves."""
    marker = tmp_path / "imported"
    pkgs = tmp_path / "pkgs"
    pkgs.mkdir()
    (pkgs / "sa_evilmod.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nfrom {MODULE} import tiny as build\n"
    )
    monkeypatch.syspath_prepend(str(pkgs))
    monkeypatch.syspath_prepend(str(files.root / "pkgs"))
    monkeypatch.delitem(sys.modules, "sa_evilmod", raising=False)
    ckpt = _safetensors_with_metadata(files.safetensors, tmp_path / "m.safetensors",
                                      {"shiftaudit.format": "1", "shiftaudit.arch": "sa_evilmod:build"})
    res = cli(*eval_args(files, model=ckpt, arch=None))
    assert_clean_error(res, "sa_evilmod:build", "outside shiftaudit", "--arch")
    assert not marker.exists() and "sa_evilmod" not in sys.modules
    # naming it explicitly is the user's decision
    res = cli(*eval_args(files, "--quiet", model=ckpt, arch="sa_evilmod:build"))
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
def test_safetensors_metadata_is_data_only(files, tmp_path, key, value, needle):
    ckpt = _safetensors_with_metadata(files.safetensors, tmp_path / "m.safetensors", {"shiftaudit.format": "1", key: value})
    res = cli(*eval_args(files, model=ckpt, arch=None))
    line = assert_clean_error(res)
    assert needle in line
    assert len(line) < 600  # the hostile value is not echoed back


def test_header_length_beyond_the_file_is_a_clean_error(files, tmp_path):
    path = tmp_path / "lie.safetensors"
    path.write_bytes(struct.pack("<Q", 10**12) + b'{"__metadata__": {}}')
    assert_clean_error(cli(*eval_args(files, model=path, arch=None)), "safetensors")


# ---------------------------------------------------------------------------------------------------------------
# Output locations are checked before the work, not after it
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "where, needle",
    [("FILE/report.json", "is a file, not a folder"), ("/proc/sa-report.json", "cannot be written"), ("DIR", "is a folder")],
)
def test_check_output_path_refuses_unwritable_places_without_creating_anything(tmp_path, where, needle):
    from shiftaudit.errors import OutputError
    from shiftaudit.files import check_output as check_output_path

    (tmp_path / "FILE").write_text("x")
    target = Path(where.replace("FILE", str(tmp_path / "FILE")).replace("DIR", str(tmp_path)))
    with pytest.raises(OutputError, match=needle):
        check_output_path(target, "--json")
    check_output_path(tmp_path / "new" / "deeper" / "r.json", "--json")  # fine, and not created
    check_output_path(tmp_path / "outdir", "--out", folder=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE"]


def test_a_model_failing_with_a_python_error_is_the_models_fault_not_ours(files, tmp_path):
    res = cli(*eval_args(files, "--json", tmp_path / "r.json", arch=f"{MODULE}:needs_mask"))
    assert_clean_error(res, "The model failed", "mask")
    assert not (tmp_path / "r.json").exists()


def test_unwritable_output_fails_before_the_model_runs(files, tmp_path):
    (tmp_path / "afile").write_text("x")
    # the feature-map model would fail its first forward pass: the output error must come first
    res = cli(*eval_args(files, "--json", tmp_path / "afile" / "r.json", arch=f"{MODULE}:feature_map"))
    assert_clean_error(res, "afile")
