"""Bad input through the real CLI: every case is one clear sentence on stderr, exit code 2, and no output left behind.

A user points ``shiftaudit`` at files they did not make. Each row of the table writes real files in a temporary
folder, runs ``eval`` (or ``inspect``/``patch``) the way a user would, and checks the contract of ``handle_errors``:
exactly one line on stderr that starts with ``error:``, no traceback, no "internal error", exit code 2, and nothing
written where ``--json``/``--out``/``-o`` pointed. Hypothesis explores the bad option combinations too many for a table.
Fixtures: ``tiny_files``, ``tiny_env`` and ``tiny_setup`` (tests/conftest.py).
"""

from __future__ import annotations

import os
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from tests.helpers import (
    NAME_MAX,
    TINY_FILES_ARCH,
    TINY_FILES_MODULE,
    TINY_SETUP_MODULE,
    TinyFiles,
    assert_clean_error,
    cli,
    env_eval_args,
    files_eval_args,
    folder_with_corrupt_images,
    hypothesis_settings,
    named,
    nothing_written,
    safetensors_with_metadata,
    small_image_folder,
    write_image_folder,
    write_images,
)


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


Build = Callable[[TinyFiles, Path], list[Any]]


ROWS: list[tuple[str, Build, tuple[str, ...]]] = [
    ("missing file", lambda f, t: files_eval_args(f, model=t / "nope.pt"), ("does not exist", "nope.pt")),
    ("directory instead of file", lambda f, t: files_eval_args(f, model=f.root), ("is a directory",)),
    ("truncated .pt", lambda f, t: files_eval_args(f, model=_truncated(f.pt, t / "cut.pt")), ("truncated or corrupt",)),
    (
        "truncated .safetensors",
        lambda f, t: files_eval_args(f, model=_truncated(f.safetensors, t / "cut.safetensors")),
        ("safetensors",),
    ),
    (
        "truncated TorchScript",
        lambda f, t: files_eval_args(f, model=_truncated(f.torchscript, t / "cut.ts"), arch=None),
        ("truncated or corrupt",),
    ),
    (
        "TorchScript with damaged code",
        lambda f, t: files_eval_args(f, model=_torchscript_with_broken_code(f.torchscript, t / "bad.ts"), arch=None),
        ("TorchScript archive", "cannot be loaded"),
    ),
    ("text file as model", lambda f, t: files_eval_args(f, model=_text(t / "model.pt")), ("not a model checkpoint", "text file")),
    ("PNG as model", lambda f, t: files_eval_args(f, model=_png(t / "model.pth")), ("not a model checkpoint", "PNG image")),
    (
        "safetensors metadata not JSON",
        lambda f, t: files_eval_args(
            f,
            model=safetensors_with_metadata(f.safetensors, t / "m.safetensors", {"shiftaudit.arch_kwargs": "{oops"}),
            arch=None,
        ),
        ("malformed metadata", "shiftaudit.arch_kwargs", "not valid JSON"),
    ),
    (
        "safetensors metadata of the wrong type",
        lambda f, t: files_eval_args(
            f,
            model=safetensors_with_metadata(f.safetensors, t / "m.safetensors", {"shiftaudit.num_classes": "three"}),
            arch=None,
        ),
        ("malformed metadata", "not an integer"),
    ),
    (
        "state dict for another architecture",
        lambda f, t: files_eval_args(f, model=_wrong_arch_state_dict(t / "other.pt"), arch="resnet18"),
        ("does not fit resnet18", "missing", "conv1.weight", "unexpected", "encoder.weight"),
    ),
    ("checkpoint is a pipe", lambda f, t: files_eval_args(f, model=_fifo(t / "pipe.pt")), ("not a regular file",)),
    (
        "arch unknown",
        lambda f, t: files_eval_args(f, arch="resnet19"),
        ("Unknown architecture 'resnet19'", "did you mean", "resnet18"),
    ),
    (
        "arch factory module missing",
        lambda f, t: files_eval_args(f, arch="no_such_pkg.models:net"),
        ("Cannot import module 'no_such_pkg.models'",),
    ),
    ("num-classes flag vs checkpoint", lambda f, t: files_eval_args(f, "--num-classes", "5"), ("3 classes", "--num-classes")),
    (
        "more label folders than classes",
        lambda f, t: files_eval_args(f, data=_five_class_folder(t)),
        ("Labels go up to 4", "3 classes", "--class-map"),
    ),
    (
        "labels outside the classes",
        lambda f, t: files_eval_args(f, data=_tensor_labels(t, [0, 1, 7])),
        ("Labels go up to 7", "3 classes"),
    ),
    (
        "negative labels",
        lambda f, t: files_eval_args(f, data=_tensor_labels(t, [0, -2, 1])),
        ("Labels must be class indices >= 0",),
    ),
    ("empty data folder", lambda f, t: files_eval_args(f, data=_empty_folder(t)), ("No images found",)),
    ("data is a pipe", lambda f, t: files_eval_args(f, data=_fifo(t / "data.npz")), ("neither a regular file nor a folder",)),
    (
        "class map nested too deeply",
        lambda f, t: files_eval_args(f, "--class-map", _deep_class_map(t)),
        ("Class map", "nested too deeply"),
    ),
    ("data path missing", lambda f, t: files_eval_args(f, data=t / "nowhere"), ("Data path", "does not exist")),
    ("only unreadable images", lambda f, t: files_eval_args(f, data=_corrupt_only(t)), ("None of the 2 images could be read",)),
    (
        "unreadable image with --strict",
        lambda f, t: files_eval_args(f, "--strict", data=folder_with_corrupt_images(t)),
        ("Cannot read image", "broken.png", "--strict"),
    ),
    (
        "max shift beyond the image",
        lambda f, t: [
            "eval",
            f.pt,
            "--arch",
            TINY_FILES_ARCH,
            "--data",
            small_image_folder(t),
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
    (
        "all-inf logits",
        lambda f, t: files_eval_args(f, arch=f"{TINY_FILES_MODULE}:inf_everywhere"),
        ("NaN or infinite", "every image"),
    ),
    (
        "output is a feature map",
        lambda f, t: files_eval_args(f, arch=f"{TINY_FILES_MODULE}:feature_map"),
        ("output has shape", "(batch, classes)"),
    ),
    (
        "sampled mode with layers",
        lambda f, t: files_eval_args(f, "--mode", "sampled", "--layers", "auto"),
        ("--mode exhaustive",),
    ),
    (
        "min-accuracy on unlabelled data",
        lambda f, t: files_eval_args(f, "--min-accuracy", "0.5", data=_unlabelled(t)),
        ("--min-accuracy", "needs labelled data"),
    ),
    ("fp16 on the CPU", lambda f, t: files_eval_args(f, "--precision", "fp16"), ("fp16", "CUDA")),
    (
        "class map on a flat folder",
        lambda f, t: files_eval_args(f, "--class-map", f.root / "map.json", data=_unlabelled(t)),
        ("class map",),
    ),
    ("raw with image files", lambda f, t: files_eval_args(f, "--raw"), ("--raw",)),
    ("junit without a threshold", lambda f, t: files_eval_args(f, "--junit", t / "j.xml"), ("--junit",)),
    ("bad --mean", lambda f, t: files_eval_args(f, "--mean", "a,b,c"), ("--mean",)),
    ("json path under a regular file", lambda f, t: files_eval_args(f, "--json", _file_as_parent(t)), ("afile", "not a folder")),
    ("json path in /proc", lambda f, t: files_eval_args(f, "--json", "/proc/shiftaudit-x.json"), ("/proc/shiftaudit-x.json",)),
    ("json path is a directory", lambda f, t: files_eval_args(f, "--json", t), ("is a folder",)),
    ("out folder is a file", lambda f, t: files_eval_args(f, "--out", _file_as_parent(t).parent), ("afile", "not a folder")),
    (
        "size below the network's stride",
        lambda f, t: files_eval_args(f, "--size", "1", "--max-shift", "0"),
        ("cannot run on 1x1 inputs", "total stride is 2", "--size 2"),
    ),
    ("shift step inf", lambda f, t: files_eval_args(f, "--shift-step", "inf"), ("--shift-step must be a finite number",)),
    ("a million pairs", lambda f, t: files_eval_args(f, "--pairs", "1000000"), ("--pairs 1000000", "4,096")),
    (
        "crop canvas beyond memory",
        lambda f, t: files_eval_args(f, "--shift-mode", "crop", "--max-shift", "5000"),
        ("--max-shift 5000", "10016x10016", "GiB per image", "--max-shift 2040"),
    ),
    (
        "class map index 1e20",
        lambda f, t: files_eval_args(f, "--class-map", _class_map(t, '{"class_0": 0, "class_1": 1e20, "class_2": 2}')),
        ("1e+20, not a whole class index",),
    ),
    (
        "class map index true",
        lambda f, t: files_eval_args(f, "--class-map", _class_map(t, '{"class_0": 0, "class_1": true, "class_2": 2}')),
        ("true, not a whole class index",),
    ),
    ("tensor file of strings", lambda f, t: files_eval_args(f, data=_strings_npz(t)), ("Images must be numbers, not strings",)),
    ("NaN --mean", lambda f, t: files_eval_args(f, "--mean", "nan,0,0"), ("--mean", "finite")),
    ("resume path is a folder", lambda f, t: files_eval_args(f, "--resume", t), ("is a folder; pass a file path",)),
    ("inspect a missing file", lambda f, t: ["inspect", t / "nope.pt"], ("does not exist",)),
    ("inspect a text file", lambda f, t: ["inspect", _text(t / "notes.safetensors")], ("safetensors",)),
    (
        "patch a TorchScript archive",
        lambda f, t: ["patch", f.torchscript, "-o", t / "p.safetensors"],
        ("TorchScript", "cannot be patched"),
    ),
    (
        "patch --dry-run with -o",
        lambda f, t: ["patch", f.pt, "--arch", TINY_FILES_ARCH, "--dry-run", "-o", t / "p.safetensors"],
        ("--dry-run",),
    ),
    (
        "patch output under a regular file",
        lambda f, t: [
            "patch",
            f.pt,
            "--arch",
            TINY_FILES_ARCH,
            "--size",
            "16",
            "-o",
            _file_as_parent(t).parent / "p.safetensors",
        ],
        ("afile", "not a folder"),
    ),
]


# The wrong-architecture row builds every torchvision signature to name the better fit (~12 s): the same refusal
# and hint are held fast by tests/test_loading.py::test_wrong_arch_names_missing_keys_and_better_arch.
SLOW_ROWS = {"state dict for another architecture"}


@pytest.mark.parametrize(
    "build, needles",
    [pytest.param(*r[1:], id=r[0], marks=[pytest.mark.slow] if r[0] in SLOW_ROWS else []) for r in ROWS],
)
def test_bad_input_is_one_sentence_exit_2_and_no_output(tiny_files, tmp_path, build, needles):
    args = build(tiny_files, tmp_path)
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


def test_a_model_failing_with_a_python_error_is_the_models_fault_not_ours(tiny_files, tmp_path):
    res = cli(*files_eval_args(tiny_files, "--json", tmp_path / "r.json", arch=f"{TINY_FILES_MODULE}:needs_mask"))
    assert_clean_error(res, "The model failed", "mask")
    assert not (tmp_path / "r.json").exists()


def test_unwritable_output_fails_before_the_model_runs(tiny_files, tmp_path):
    (tmp_path / "afile").write_text("x")
    # the feature-map model would fail its first forward pass: the output error must come first
    res = cli(*files_eval_args(tiny_files, "--json", tmp_path / "afile" / "r.json", arch=f"{TINY_FILES_MODULE}:feature_map"))
    assert_clean_error(res, "afile")


FEW = hypothesis_settings(12)  # each example runs the eval command


def first_error_line(res: Any) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines and lines[0].startswith("error: "), res.output
    assert "Traceback" not in res.output and "internal error" not in res.output, res.output
    return lines[0]


BAD_OPTIONS = {
    "--max-shift": ["9", "100000", "10" * 20],
    "--shift-step": ["inf", "nan", "1e400", "0", "0.5", "1000"],
    "--pairs": ["0", "-3", "1000000", "10" * 20],
    "--size": ["0", "1", "5000", "10" * 20],
    "--resize": ["0", "100000"],
    "--batch-size": ["0", "1000000000"],
    "--limit": ["0", "-1"],
    "--workers": ["-1", "1000000"],
    "--num-classes": ["0", "10000000000"],
    "--mean": ["nan,0,0", "inf,0,0", "1e400,0,0", "1,2", "a"],
    "--std": ["0,0,0", "-1,1,1", "nan,1,1"],
    "--shift-mode": ["sideways"],
    "--mode": ["fast"],
    "--precision": ["fp8"],
}


@FEW
@given(picked=st.lists(st.sampled_from(sorted(BAD_OPTIONS)), min_size=1, max_size=3, unique=True), data=st.data())
def test_bad_option_combinations_are_exit_2_and_name_an_option(tiny_env, tmp_path, picked, data):
    """Out-of-range, non-finite and nonsense values, alone or together: exit 2, the first line names one of the
    options given (or --size/--max-shift, which they contradict), nothing written, well within 30 s (a --max-shift 5000
    crop canvas or a million pairs would not be)."""
    args: list[Any] = []
    for flag in picked:
        args += [flag, data.draw(st.sampled_from(BAD_OPTIONS[flag]), label=flag)]
    report = tmp_path / f"r{time.monotonic_ns()}.json"
    t0 = time.monotonic()
    res = cli(*env_eval_args(tiny_env, *args, "--json", report))
    assert time.monotonic() - t0 < 30
    assert res.exit_code == 2, (args, res.output)
    line = first_error_line(res)
    assert any(flag in line for flag in (*picked, "--max-shift", "--size")), (args, line)  # eval_args sets those two
    assert nothing_written(report)


def test_typer_range_errors_name_the_option_on_the_first_line(tiny_env):
    res = cli(*env_eval_args(tiny_env, "--pairs", "0"))
    assert res.exit_code == 2
    assert first_error_line(res).startswith("error: Invalid value for '--pairs'")


@pytest.mark.parametrize("what", ["eval model", "--data", "--class-map", "compare report", "inspect model", "patch model"])
def test_an_over_long_input_name_is_one_sentence_exit_2(tiny_setup, tmp_path, what):
    """A model, data or class-map name over NAME_MAX: one sentence and exit 2 (the model and --data were exit 3,
    "internal error (OSError: [Errno 36] File name too long ...)")."""
    _, ckpt, data, reports = tiny_setup
    long = named(tmp_path, NAME_MAX + 45, ".pt")
    arch = ["--arch", f"{TINY_SETUP_MODULE}:tiny", "--size", "16"]
    args = {
        "eval model": ["eval", long, *arch, "--data", data],
        "--data": ["eval", ckpt, *arch, "--data", long],
        "--class-map": ["eval", ckpt, *arch, "--data", data, "--class-map", long],
        "compare report": ["compare", reports[0], long],
        "inspect model": ["inspect", long, *arch],
        "patch model": ["patch", long, *arch],
    }[what]
    assert_clean_error(cli(*args), str(long)[:60])
    assert not list(tmp_path.iterdir())
