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


@pytest.mark.parametrize("enum, library", [
    (choices.ShiftMode, shift_mode_names()),
    (choices.Mode, ("auto", "exhaustive", "sampled")),
    (choices.Precision, PRECISIONS),
    (choices.DataKind, ("auto", *KINDS)),
    (choices.Preset, tuple(PRESETS)),
    (choices.PatchMethod, patch_method_names()),
    (choices.Pad, PAD_MODES),
    (choices.ModelFormat, FORMATS),
], ids=lambda v: getattr(v, "__name__", ""))
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
