"""A package's modules form a one-way chain: no module imports, even inside a function or for type checking only, a
module that imports it back (directly or through others)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# every package and subpackage of shiftaudit, the top-level package for its own modules
CHAINED = sorted(p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "shiftaudit").rglob("__init__.py"))


def module_imports(folder: Path) -> dict[str, set[str]]:
    """Each module of the package -> the package's modules it imports, wherever the import statement is."""
    package = ".".join(folder.relative_to(ROOT).parts)
    modules = {f"{package}.{p.stem}": p for p in folder.glob("*.py") if p.name != "__init__.py"}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            found |= {t for t in targets if t in modules and t != name}
        graph[name] = found
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as the modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for dep in sorted(graph[m]):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        state[m] = 2
        path.pop()
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


@pytest.mark.parametrize("package", CHAINED)
def test_the_modules_of_a_package_import_one_way(package):
    graph = module_imports(ROOT / package)
    assert graph
    assert cycle(graph) is None, " -> ".join(cycle(graph) or [])


def test_every_package_is_chained():
    assert {"shiftaudit", "shiftaudit/cli", "shiftaudit/data", "shiftaudit/shifts/modes"} <= set(CHAINED)
    assert len(CHAINED) >= 10


def test_a_circle_is_found():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("module", ["shiftaudit.engine.runner", "benchmarks.run"])
def test_the_engine_imports_first_in_a_fresh_interpreter(module):
    """Packages may import each other (the engine's polyphase check imports antialias, whose search runs audits), but
    no order of first import may break: `python -m benchmarks.run` (make bench) imports the engine before anything."""
    done = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
