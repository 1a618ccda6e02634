"""The CLI's fixed choices are the library's, and the command modules stay independent of one another."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from shiftaudit.antialias.blurpool import PAD_MODES
from shiftaudit.antialias.methods import patch_method_names
from shiftaudit.cli import choices
from shiftaudit.data.presets import PRESETS
from shiftaudit.data.sources import KINDS
from shiftaudit.engine.config import PRECISIONS
from shiftaudit.loading.saving import FORMATS
from shiftaudit.shifts.modes import shift_mode_names
from tests.helpers import (
    TINY_FILES_ARCH,
    cli,
    files_eval_args,
    nothing_written,
)


@pytest.mark.parametrize(
    "enum, library",
    [
        (choices.ShiftMode, shift_mode_names()),
        (choices.Mode, ("auto", "exhaustive", "sampled")),
        (choices.Precision, PRECISIONS),
        (choices.DataKind, ("auto", *KINDS)),
        (choices.Preset, tuple(PRESETS)),
        (choices.PatchMethod, patch_method_names()),
        (choices.Pad, PAD_MODES),
        (choices.ModelFormat, FORMATS),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_each_choice_enum_lists_what_the_library_accepts(enum, library):
    assert [c.value for c in enum] == list(library)


def test_no_command_module_imports_another():
    """Shared options live in cli/options.py and shared helpers in non-command modules: commands stay independent."""
    folder = Path(choices.__file__).parent
    commands = {p.stem for p in folder.glob("*_cmd.py")}
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported = {node.module.rpartition(".")[2]} | {a.name for a in node.names}
                assert path.name == "__init__.py" or not imported & commands, f"{path.name} imports {imported & commands}"


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
    tiny_files, tmp_path, command, flag, bad, choices
):
    """Typer refuses it before any work: the first stderr line names the option, the value and every choice; the
    choices are also listed in --help."""
    report = tmp_path / "r.json"
    patch = ["patch", tiny_files.pt, "--arch", TINY_FILES_ARCH, flag, bad]
    args = files_eval_args(tiny_files, flag, bad) if command == "eval" else patch
    res = cli(*args, "--json", report)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines[0] == f"error: Invalid value for '{flag}': '{bad}' is not one of {choices}.", lines[0]
    assert "Traceback" not in res.output
    assert nothing_written(report)
    help_text = " ".join(cli(command, "--help").stdout.split())
    assert all(choice.strip("'") in help_text for choice in choices.split(", "))
