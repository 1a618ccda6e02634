"""The hypothesis profiles of tests/conftest.py: `make test` (profile "ci") draws the same examples on every run and
machine, so a CI failure never depends on luck; `make fuzz` (profile "fuzz") draws fresh ones, ten times as many.

Every property test of the suite is found by its @given wrapper and checked to take derandomize from the profile,
including the ones with their own @settings.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import examples

TESTS = Path(__file__).resolve().parent


def _property_tests() -> list[tuple[str, object]]:
    found = []
    for path in sorted(TESTS.glob("test_*.py")):
        if "@given" not in path.read_text():
            continue
        module = importlib.import_module(f"tests.{path.stem}")
        found += [
            (f"{path.stem}::{name}", fn)
            for name, fn in vars(module).items()
            if callable(fn) and hasattr(fn, "_hypothesis_internal_use_settings")
        ]
    return found


def test_the_profile_in_force_is_ci_derandomised_or_fuzz_random():
    profile = settings.get_current_profile_name()
    assert profile in ("ci", "fuzz")
    if profile == "ci":
        assert settings.default.derandomize is True and settings.default.database is None
        assert examples(25) == 25
    else:
        assert settings.default.derandomize is False and examples(25) == 250


def test_every_property_test_takes_derandomize_from_the_profile():
    tests = _property_tests()
    assert len(tests) >= 7  # statistics, class maps, bad options, damaged reports, outputs (and this file's own)
    wrong = [name for name, fn in tests if fn._hypothesis_internal_use_settings.derandomize is not settings.default.derandomize]  # type: ignore[attr-defined]
    assert wrong == []
    for path in TESTS.glob("*.py"):  # the profile decides: no test pins it either way
        if path.name != "conftest.py":
            assert "derandomize=" not in path.read_text().replace('"derandomize="', ""), path.name


def test_a_test_with_its_own_settings_draws_the_same_examples_on_every_run():
    drawn: list[tuple[int, str]] = []

    @settings(max_examples=examples(20), deadline=None)  # its own settings, as the suite's property tests have
    @given(st.integers(), st.text())
    def prop(i: int, t: str) -> None:
        drawn.append((i, t))

    prop()
    first = list(drawn)
    drawn.clear()
    prop()
    if settings.get_current_profile_name() == "ci":
        assert drawn == first
    else:
        assert drawn != first
