"""Typed report entries (``shiftaudit.metrics.entries``) and the whole report (``AuditResult.from_json``).

Every registered metric declares the type of its entry; the JSON report is written from those values and read back
into them. A report written by any engine path reads back into the same types and writes back byte for byte; a
missing, empty, unknown or mistyped field is one ``ReportError`` sentence naming its JSON path.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from typing import Any

import pytest
import torch

import shiftaudit
from shiftaudit.gating import build_thresholds
from shiftaudit.metrics import AccuracyAtZeroShift, AdversarialCurve, metric_classes
from shiftaudit.metrics.entries import (
    SECTIONS,
    Curve,
    Entry,
    Grid,
    PairSummary,
    Proportion,
    ReportError,
    SequentialGate,
    Summary,
)
from shiftaudit.result import AuditResult
from shiftaudit.shifts.sets import ShiftSet
from tests.helpers import synthetic_result, tiny_cnn, write_image_folder


def _flipping_data(n: int = 6, side: int = 12) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A downsampling net and images labelled with its own zero-shift predictions: correct at zero, wrong at some shift."""
    torch.manual_seed(0)
    model = tiny_cnn(num_classes=3, size=side).eval()
    x = torch.randn(n, 3, side, side)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """One report of each engine path that writes one, as the JSON it is saved as."""
    model, x, y = _flipping_data()
    common: dict[str, Any] = {"device": "cpu", "max_shift": 2}
    folder = write_image_folder(tmp_path_factory.mktemp("report-types") / "val", size=12)
    files = shiftaudit.load_data(folder, preprocessing=shiftaudit.Preprocessing((12, 12), (0.5,) * 3, (0.25,) * 3))
    window = ShiftSet.window((12, 12), 2)
    runs = {
        "dense, gated, files": lambda: shiftaudit.audit(
            model, files, thresholds=build_thresholds(0.1), polyphase=False, **common
        ),
        "polyphase": lambda: shiftaudit.audit(model, (x, y), **common),
        "sampled": lambda: shiftaudit.audit(model, (x, y), mode="sampled", pairs=2, **common),
        "unlabelled": lambda: shiftaudit.audit(model, x, **common),
        "crop": lambda: shiftaudit.audit(model, (x, y), shift_mode="crop", **common),
        "subpixel": lambda: shiftaudit.audit(model, (x, y), shift_mode="subpixel", shift_step=0.5, device="cpu", max_shift=1),
        "layers": lambda: shiftaudit.audit(model, (x[:2], y[:2]), layers="auto", device="cpu", max_shift=1),
        "early exit": lambda: shiftaudit.audit(
            model, (x, y), shifts=window, device="cpu", early_exit=True, metrics=[AccuracyAtZeroShift(), AdversarialCurve(window)]
        ),
    }
    out = {name: json.loads(json.dumps(run().to_json())) for name, run in runs.items()}
    sequential = copy.deepcopy(out["sampled"])
    sequential["metrics"] = {
        "sequential": {
            "decision_error": 0.01,
            "budget": 0.5,
            "draws": 40,
            "images_seen": 6,
            "forward_rows": 90,
            "forward_rows_exhaustive": 150,
            "statistics": [
                {
                    "metric": "consistency",
                    "radius": None,
                    "estimate": 0.97,
                    "ci_low": 0.9,
                    "ci_high": 1.0,
                    "confidence": 0.99,
                    "draws": 40,
                    "decision": "pass",
                }
            ],
        }
    }
    sequential["per_image"] = {}
    out["sequential"] = sequential
    return out


def _dump(report: Any) -> str:
    return json.dumps(report, indent=1)


def test_every_engine_path_reads_back_into_its_types_and_writes_back_byte_for_byte(reports):
    flips = reports["dense, gated, files"]["metrics"]["flip_examples"]["examples"]
    assert flips and all("path" in ex for ex in flips)  # the optional fields are exercised too
    assert reports["unlabelled"]["metrics"]["flip_examples"]["reference"] == "zero-shift prediction"
    declared = {cls.key(): cls.entry_type for cls in metric_classes() if cls.reported and cls.entry_type} | SECTIONS
    seen = set()
    for name, report in reports.items():
        back = AuditResult.from_json(json.loads(_dump(report)))
        assert _dump(back.to_json()) == _dump(report), name
        for key, kind in declared.items():
            entry = back.entry(*key)
            if entry is not None:
                assert type(entry) is kind, (name, key)
                seen.add(key)
    assert seen == set(declared)  # every declared entry type was read from a real report


def test_a_result_built_by_the_engine_holds_its_metrics_typed(reports):
    model, x, y = _flipping_data()
    result = shiftaudit.audit(model, (x, y), device="cpu", max_shift=1)
    assert isinstance(result.metrics["accuracy"]["none"], Proportion)
    assert type(result.metrics["flip_rate"]) is PairSummary and type(result.metrics["variation"]) is Summary
    assert isinstance(result.metrics["adversarial"], Curve) and isinstance(result.metrics["accuracy_map"], Grid)


def test_entries_read_like_the_json_they_stand_for():
    entry = Proportion(0.5, 0.25, float("nan"), 4)
    assert entry["value"] == 0.5 and entry.get("n") == 4 and "ci_low" in entry and "other" not in entry
    assert list(entry) == ["value", "ci_low", "ci_high", "n"] and len(entry) == 4
    assert entry.to_json() == {"value": 0.5, "ci_low": 0.25, "ci_high": None, "n": 4}  # NaN is written as null
    assert Proportion(0.5, 0.25, 0.75, 4) == {"value": 0.5, "ci_low": 0.25, "ci_high": 0.75, "n": 4}
    with pytest.raises(KeyError):
        entry["other"]
    flips = synthetic_result().metrics["flip_examples"]
    assert "path" not in flips["examples"][0] and flips["examples"][0].path is None  # omitted while None
    assert "reference" not in flips.to_json()


def test_a_result_given_dicts_types_them_and_refuses_a_wrong_one():
    result = synthetic_result()
    assert isinstance(result.metrics["consistency"]["exact"], Proportion)
    assert result.consistency == result.metrics["consistency"]["exact"].value
    bad = synthetic_result()
    with pytest.raises(ReportError, match=r"^metrics\.variation\.mean is a string, not a number or null$"):
        AuditResult(**{**vars(bad), "metrics": {"variation": {**bad.metrics["variation"], "mean": "low"}}})


def _entry_paths(report: dict[str, Any]) -> list[tuple[str, ...]]:
    """The path of every typed entry of a report (metric entries and the sections beside them)."""
    keys = [cls.key() for cls in metric_classes() if cls.reported and cls.entry_type] + list(SECTIONS)
    out = []
    for key in keys:
        node: Any = report["metrics"]
        for part in key:
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            out.append(key)
    return out


def _refusal(report: dict[str, Any]) -> str:
    with pytest.raises(ReportError) as err:
        AuditResult.from_json(json.loads(json.dumps(report)), "r.json")
    message = str(err.value)
    assert "\n" not in message and message.startswith("r.json is not a well-formed shiftaudit audit report ("), message
    return message


def _at(report: dict[str, Any], key: tuple[str, ...]) -> dict[str, Any]:
    node = report["metrics"]
    for part in key:
        node = node[part]
    return node


@pytest.mark.parametrize("damage", ["empty", "missing", "mistyped", "unknown", "not an object"])
def test_each_entry_missing_empty_mistyped_or_unknown_is_one_sentence_naming_its_path(reports, damage):
    full = reports["dense, gated, files"]
    paths = _entry_paths(full) + [("layers",)]
    for key in paths:
        report = copy.deepcopy(reports["layers"] if key == ("layers",) else full)
        *parents, leaf = key
        parent = _at(report, tuple(parents)) if parents else report["metrics"]
        entry = parent[leaf]
        first = next(iter(entry))
        where = ".".join(("metrics", *key))
        if damage == "empty":
            parent[leaf], needle = {}, f"({where} is empty)"
        elif damage == "missing":
            del entry[first]
            needle = f"({where}.{first} is missing)"
        elif damage == "mistyped":
            entry[first], needle = "x", f"({where}.{first} is a string, not "
        elif damage == "unknown":
            entry["extra"], needle = 1, f"({where}.extra is not a field shiftaudit writes)"
        else:
            parent[leaf], needle = [entry], f"({where} is a list, not an object)"
        assert needle in _refusal(report), key


@pytest.mark.parametrize(
    "damage, needle",
    [
        (lambda r: r["metrics"]["adversarial"]["ci_low"].pop(), "(metrics.adversarial has columns of different lengths"),
        (
            lambda r: r["metrics"]["adversarial"].update(radius=[], accuracy=[], ci_low=[], ci_high=[]),
            "(metrics.adversarial.radius is empty)",
        ),
        (lambda r: r["metrics"]["accuracy_map"]["accuracy"][1].pop(), "(metrics.accuracy_map.accuracy is not a dh x dw grid"),
        (lambda r: r["metrics"]["accuracy_map"].update(dw=[]), "(metrics.accuracy_map.dw is empty)"),
        (lambda r: r["metrics"]["accuracy_map"]["diagonal"]["shift"].pop(), "(metrics.accuracy_map.diagonal has columns"),
        (
            lambda r: r["metrics"]["flip_examples"]["examples"][0]["p_correct"].pop(),
            "(metrics.flip_examples.examples[0].p_correct is not a dh x dw grid",
        ),
        (
            lambda r: r["metrics"]["flip_examples"]["examples"][0].update(flip_shift=[1]),
            "(metrics.flip_examples.examples[0].flip_shift is not a (dh, dw) pair)",
        ),
        (
            lambda r: r["metrics"]["flip_examples"]["examples"][0].update(path=None),
            "(metrics.flip_examples.examples[0].path is null, not a string)",
        ),
        (lambda r: r["metrics"]["accuracy"]["none"].update(n=True), "(metrics.accuracy.none.n is true/false, not an integer)"),
        (lambda r: r["metrics"]["accuracy"]["none"].update(n=4.5), "(metrics.accuracy.none.n is a number, not an integer)"),
        (
            lambda r: r["metrics"]["adversarial"]["accuracy"].__setitem__(1, None),
            "(metrics.adversarial.accuracy[1] is null, not a number)",
        ),
        (lambda r: r["metrics"].update(accuracy={}), "(metrics.accuracy is empty)"),
        (lambda r: r["metrics"].update(accuracy=[1]), "(metrics.accuracy is a list, not an object)"),
        (lambda r: r["metrics"].update(my_score={"value": "high"}), "(metrics.my_score.value is a string, not a number or null)"),
        (lambda r: r["metrics"].update({"a\nb": {"value": {}}}), '(metrics."a\\nb".value is an object, not a number or null)'),
        (lambda r: r["data"].update(image_size=[12]), "(data.image_size is not a (height, width) pair)"),
        (lambda r: r["settings"]["shifts"].update(step="1"), "(settings.shifts.step is a string, not a number)"),
        (lambda r: r["settings"].pop("engine"), "(settings.engine is missing)"),
        (lambda r: r["per_image"]["correct"].append(True), "(per_image has columns of different lengths)"),
        (lambda r: r["per_image"]["variation"].__setitem__(0, "x"), "(per_image.variation[0] is a string, not a number or null)"),
        (lambda r: r["per_image"].pop("image_id"), "(per_image.image_id is missing)"),
        (lambda r: r.update(junk=1), "(junk is not a field shiftaudit writes)"),
        (lambda r: r.pop("notes"), "(notes is missing)"),
        (lambda r: r.update(gate=None), "(gate is null, not an object)"),
        (lambda r: r["metrics"]["sequential"]["statistics"][0].update(draws="40"), None),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_shapes_and_sections_beyond_the_entries_are_checked(reports, damage, needle):
    report = copy.deepcopy(reports["sequential" if needle is None else "dense, gated, files"])
    damage(report)
    message = _refusal(report)
    assert needle is None or needle in message, message
    if needle is None:
        assert "(metrics.sequential.statistics[0].draws is a string, not an integer)" in message


def test_what_is_not_a_report_or_is_newer_is_refused_before_its_fields(reports):
    report = reports["sampled"]
    cases = [
        ([1], "r.json is not a shiftaudit audit report."),
        ({**report, "schema": "other"}, "r.json is not a shiftaudit audit report."),
        ({**report, "schema_version": "1"}, "r.json is not a shiftaudit audit report (its schema_version is '1')."),
        (
            {**report, "schema_version": 2, "metrics": 5},
            "r.json uses report schema version 2, newer than this shiftaudit reads (1); upgrade shiftaudit.",
        ),
    ]
    for doc, message in cases:
        with pytest.raises(ReportError) as err:
            AuditResult.from_json(doc, "r.json")
        assert str(err.value) == message


def test_entries_no_metric_declares_are_kept_as_they_are(reports):
    report = copy.deepcopy(reports["sampled"])
    report["metrics"]["my_score"] = {"value": 0.5, "ci_low": None, "extra": [1, {"a": True}]}
    report["metrics"]["a_list"] = [1, "two"]
    report["per_image"]["my_column"] = ["x"] * len(report["per_image"]["image_id"])
    back = AuditResult.from_json(json.loads(_dump(report)))
    assert back.metrics["my_score"] == report["metrics"]["my_score"] and not isinstance(back.metrics["my_score"], Entry)
    assert _dump(back.to_json()) == _dump(report)


def test_headline_numbers_read_the_typed_entries(reports):
    back = AuditResult.from_json(reports["subpixel"])
    curve = back.metrics["adversarial"]
    assert back.accuracy == back.metrics["accuracy"]["none"].value
    assert back.adversarial_curve == {
        r if isinstance(r, float) and not r.is_integer() else int(r): a for r, a in zip(curve.radius, curve.accuracy)
    }
    assert back.adversarial_accuracy(0.5) == curve.accuracy[1] and back.adversarial_accuracy(0.25) is None
    sampled = AuditResult.from_json(reports["sampled"])
    assert sampled.consistency == sampled.consistency_sampled and sampled.variation is None
    assert SequentialGate.from_json(reports["sequential"]["metrics"]["sequential"], "s").statistics[0].estimate == 0.97
    assert math.isnan(
        AuditResult(**{**vars(back), "metrics": {"accuracy": {"none": Proportion(float("nan"), None, None, 0)}}}).accuracy
    )


def test_a_plug_in_entry_is_typed_while_its_metric_is_registered_and_json_otherwise(reports):
    from shiftaudit.metrics import Metric, register_metric, unregister_metric

    @dataclass(frozen=True, eq=False)
    class Score(Entry):
        value: float
        n: int

    class Typed(Metric):
        name, entry_type = "plugin_score", Score
        update = compute = None  # type: ignore[assignment]

    report = copy.deepcopy(reports["sampled"])
    report["metrics"]["plugin_score"] = {"value": 0.5, "n": 6}
    assert AuditResult.from_json(report).metrics["plugin_score"] == {"value": 0.5, "n": 6}  # unregistered: JSON
    register_metric(Typed)
    try:
        assert type(AuditResult.from_json(report).metrics["plugin_score"]) is Score
        report["metrics"]["plugin_score"]["n"] = 6.0
        assert "(metrics.plugin_score.n is a number, not an integer)" in _refusal(report)
        Typed.entry_type = None  # registered, declaring no type: its JSON is kept as it is
        assert AuditResult.from_json(report).metrics["plugin_score"] == {"value": 0.5, "n": 6.0}
    finally:
        unregister_metric("plugin_score")
