"""The pytest plugin (loaded through the ``pytest11`` entry point): the ``shiftaudit_report`` fixture.

A test that takes the fixture gets a :class:`~shiftaudit.testing.ReportingAsserts` whose assertions write their
reports under the test's ``tmp_path``; when the test fails, the report files appear in its failure output (a
"shiftaudit report" section), whatever made it fail. Pytest loads this module at start-up in every session of an
environment where shiftaudit is installed, so it imports pytest alone: torch loads when a test uses the fixture.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

_ASSERTS = pytest.StashKey[Any]()
SHOWN_SUFFIXES = (".json", ".html")  # the report itself, not each of its pictures


@pytest.fixture
def shiftaudit_report(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    """Shift-robustness assertions (``assert_shift_consistency``, ``assert_shift_robust``, ...) that write their
    reports under ``tmp_path / "shiftaudit"``; a failed test lists them."""
    from shiftaudit.testing import ReportingAsserts

    asserts = ReportingAsserts(tmp_path / "shiftaudit")
    request.node.stash[_ASSERTS] = asserts
    return asserts


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    asserts = item.stash.get(_ASSERTS, None)
    if asserts is None:
        return
    report = outcome.get_result()
    shown = [str(p) for p in asserts.written if p.suffix in SHOWN_SUFFIXES]
    if report.failed and shown:
        report.sections.append(("shiftaudit report", "\n".join(shown)))
