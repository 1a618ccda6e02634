"""The shape of the code itself: short functions, and every module type-checked (no mypy module left ignored)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "shiftaudit"
MAX_BODY_LINES = 60


def body_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the first statement after the docstring to the function's last line."""
    body = fn.body
    first = body[0]
    docstring = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)
    if docstring and len(body) > 1:
        body = body[1:]
    assert fn.end_lineno is not None
    return fn.end_lineno - body[0].lineno + 1


def long_functions(package: Path, limit: int) -> list[str]:
    """``file:function:length`` of every function (methods and nested functions included) whose body is over ``limit``."""
    found = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = body_lines(node)
                if length > limit:
                    found.append(f"{path.relative_to(package.parent)}:{node.name}:{length}")
    return found


def test_no_function_body_over_60_lines() -> None:
    offenders = long_functions(PACKAGE, MAX_BODY_LINES)
    assert not offenders, f"function bodies over {MAX_BODY_LINES} lines (split them): " + ", ".join(offenders)


def test_no_mypy_override_ignores_errors() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the configuration is the same on every version
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    overrides = config.get("tool", {}).get("mypy", {}).get("overrides", [])
    ignored = [o.get("module") for o in overrides if o.get("ignore_errors")]
    assert not ignored, f"mypy overrides with ignore_errors (type-check these modules instead): {ignored}"
