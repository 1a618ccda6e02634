"""JUnit XML for the CI gate: well-formed, the structure CI tools read, counts right, failures named."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from xml.parsers import expat

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from shiftaudit.cli import app
from shiftaudit.errors import one_line
from shiftaudit.gating import build_thresholds, evaluate_gate
from shiftaudit.report.junit import SUITE_NAME, build_junit, write_junit
from tests.helpers import examples, synthetic_result

runner = CliRunner()

# What the JUnit schema CI tools read (Jenkins junit-10.xsd, GitLab, GitHub test reporters) allows where.
SUITE_ATTRS = {"name", "tests", "failures", "errors", "skipped", "time"}
SUITE_CHILDREN = {"properties", "testcase", "system-out", "system-err"}
CASE_CHILDREN = {"skipped", "error", "failure", "system-out", "system-err"}


def check_junit_structure(path: Path) -> list[ET.Element]:
    """Validate the parts of the JUnit schema CI tools rely on; returns the test suites."""
    root = ET.parse(path).getroot()  # well-formed, or this raises
    assert root.tag in ("testsuites", "testsuite")
    suites = [root] if root.tag == "testsuite" else list(root)
    assert suites and all(s.tag == "testsuite" for s in suites)
    for suite in suites:
        assert SUITE_ATTRS <= set(suite.attrib), suite.attrib
        for key in ("tests", "failures", "errors", "skipped"):
            assert suite.get(key).isdigit()
        float(suite.get("time"))
        assert {c.tag for c in suite} <= SUITE_CHILDREN
        kids = [c.tag for c in suite]
        if "properties" in kids:
            assert kids.index("properties") == 0 and kids.count("properties") == 1
            assert all(p.tag == "property" and {"name", "value"} <= set(p.attrib) for p in suite.find("properties"))
        cases = suite.findall("testcase")
        assert int(suite.get("tests")) == len(cases)
        assert int(suite.get("failures")) == sum(1 for c in cases if c.find("failure") is not None)
        assert int(suite.get("errors")) == sum(1 for c in cases if c.find("error") is not None)
        assert int(suite.get("skipped")) == sum(1 for c in cases if c.find("skipped") is not None)
        for case in cases:
            assert case.get("name") and case.get("classname")
            float(case.get("time", "0"))
            assert {c.tag for c in case} <= CASE_CHILDREN
            for failure in case.findall("failure"):
                assert failure.get("message")
    if root.tag == "testsuites":
        for key in ("tests", "failures", "errors"):
            assert int(root.get(key)) == sum(int(s.get(key)) for s in suites)
    return suites


def test_one_testcase_per_threshold_and_failures_named(tmp_path):
    r = synthetic_result(gate=True)  # consistency >= 0.5 passes, accuracy >= 0.95 fails, adversarial r=2 >= 0.5 passes
    path = write_junit(r, tmp_path / "junit.xml")
    assert path.read_bytes().startswith(b"<?xml")
    (suite,) = check_junit_structure(path)
    assert suite.get("name") == SUITE_NAME
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("3", "1", "0", "0")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert set(cases) == {"consistency >= 0.5", "accuracy >= 0.95", "adversarial accuracy at r=2 >= 0.5"}
    failure = cases["accuracy >= 0.95"].find("failure")
    assert failure is not None and failure.get("message").startswith("FAIL accuracy 0.9000")
    assert "--min-accuracy 0.95" in failure.get("message")
    assert cases["consistency >= 0.5"].find("failure") is None
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["model"] == "tiny" and props["data"] == "synthetic test set"
    assert not list(tmp_path.glob(".*")), "temporary file left behind"


def test_gate_report_and_no_gate(tmp_path):
    r = synthetic_result()
    gate = evaluate_gate(r, build_thresholds(min_consistency=0.99))
    (suite,) = check_junit_structure(write_junit(gate, tmp_path / "g.xml"))
    assert (suite.get("tests"), suite.get("failures")) == ("1", "1")
    (empty,) = check_junit_structure(write_junit(r, tmp_path / "none.xml"))  # no thresholds: a valid, empty suite
    assert empty.get("tests") == "0"


def test_eval_junit_end_to_end(tmp_path):
    from shiftaudit.data.synthetic import make_synthetic
    from shiftaudit.models.demo import DEMO_TEST_SEED, demo_checkpoint_path

    images, labels, _ = make_synthetic(12, seed=DEMO_TEST_SEED)
    data = tmp_path / "demo.npz"
    np.savez(data, images=images, labels=labels)
    junit = tmp_path / "out" / "junit.xml"
    res = runner.invoke(
        app,
        [
            "eval",
            str(demo_checkpoint_path()),
            "--data",
            str(data),
            "--max-shift",
            "1",
            "--device",
            "cpu",
            "--workers",
            "0",
            "--quiet",
            "--min-consistency",
            "0.0",
            "--max-variation",
            "0.0",
            "--junit",
            str(junit),
        ],
    )
    assert res.exit_code == 1, res.output  # any shift moves P(correct) a little: variation 0 cannot hold
    (suite,) = check_junit_structure(junit)
    assert (suite.get("tests"), suite.get("failures")) == ("2", "1")
    failed = [c.get("name") for c in suite.findall("testcase") if c.find("failure") is not None]
    assert failed == ["variation <= 0"]
    assert "gate: FAILED" in res.output


def test_junit_without_thresholds_is_refused_before_any_work(tmp_path):
    res = runner.invoke(app, ["eval", str(tmp_path / "missing.pt"), "--data", str(tmp_path), "--junit", str(tmp_path / "j.xml")])
    assert res.exit_code == 2
    assert "--junit" in res.output and "threshold" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "j.xml").exists()


# -- issue 24: any user string gives valid XML 1.0 ------------------------------------------------------------------
NASTY = "\x1b[31m\r\n\x07\x00\x85\x9b\u202e\ud800\ufffe[bold]<&>"
# XML 1.0's Char production; a character reference must name one too (&#x1b; is not well-formed either)
NOT_XML_CHAR = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def assert_strict_xml_1_0(data: bytes) -> ET.Element:
    text = data.decode("utf-8")  # strict: a lone surrogate cannot even be encoded
    assert NOT_XML_CHAR.search(text) is None
    for ref in re.findall(r"&#(x[0-9a-fA-F]+|[0-9]+);", text):
        code = int(ref[1:], 16) if ref.startswith("x") else int(ref)
        assert NOT_XML_CHAR.search(chr(code)) is None, f"&#{ref}; names a character XML 1.0 forbids"
    parser = expat.ParserCreate()
    parser.Parse(data, True)  # expat, without ElementTree's help
    return ET.fromstring(data)


def _with_names(name: str) -> Any:
    result = synthetic_result(gate=True)
    result.model["arch"] = f"arch{name}"
    result.model["source"] = f"/models/{name}.pt"
    result.data["description"] = f"ImageFolder {name}: 40 images"
    for check in result.gate["checks"]:
        check["message"] += f" on {name}"
        check["passed"] = False
    return result


def test_control_characters_in_user_strings_give_well_formed_xml_1_0(tmp_path):
    """ElementTree writes a control character raw (`\\x1b`) or as a reference, and XML 1.0 forbids both: the file did
    not parse, and a CI step reading it failed or showed nothing. Every string is written escaped (``\\x1b``)."""
    root = assert_strict_xml_1_0(write_junit(_with_names(NASTY), tmp_path / "j.xml").read_bytes())
    props = {p.get("name"): p.get("value") for p in root.iter("property")}
    assert props["data"] == one_line(f"ImageFolder {NASTY}: 40 images")
    assert "\\x1b[31m\\r\\n\\x07\\x00" in props["checkpoint"]
    failure = root.find(".//failure")
    assert failure is not None and one_line(NASTY) in failure.get("message") and one_line(NASTY) in failure.text
    assert not list(tmp_path.glob(".*"))


NAME_CHARS = st.one_of(st.characters(), st.sampled_from(list(NASTY) + ["\udcff", "\uffff", "\u2066", "\u0085", "\x7f"]))


@settings(max_examples=examples(60), deadline=None)
@given(name=st.text(NAME_CHARS, max_size=12))
def test_any_name_gives_well_formed_xml_1_0_that_reads_back_escaped(name):
    root = assert_strict_xml_1_0(ET.tostring(build_junit(_with_names(name)), encoding="utf-8", xml_declaration=True))
    props = {p.get("name"): p.get("value") for p in root.iter("property")}
    assert props["model"] == one_line(f"arch{name}") and props["checkpoint"] == one_line(f"/models/{name}.pt")
