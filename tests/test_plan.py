"""The audit plan: every decision made, and every refusal said, before any image goes through the model."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import shiftaudit
from shiftaudit.engine.config import AuditConfig
from shiftaudit.errors import UsageError
from shiftaudit.gating import build_thresholds
from tests.helpers import tiny_cnn


class Untouchable(nn.Module):
    """A model that must never run: the plan checks happen before any forward pass on the data."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_cnn(size=8)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(x)


def _data(n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.randn(n, 3, 8, 8), torch.randint(0, 5, (n,))


def test_plan_is_serialisable_and_matches_what_runs():
    model, data = Untouchable(), _data()
    prepared = shiftaudit.plan_audit(AuditConfig(max_shift=2, device="cpu", polyphase=False), model, data)
    plan = prepared.plan
    assert model.calls == 0
    doc = json.loads(json.dumps(plan.to_json()))
    assert doc["mode"] == "exhaustive" and doc["engine"] == "dense" and doc["num_images"] == 4
    assert doc["slots_per_image"] == 25 and doc["forward_rows"] == 100 and doc["device"] == "cpu"
    assert doc["metrics"] == [
        "accuracy_none",
        "accuracy_random",
        "confidence",
        "consistency_sampled",
        "consistency_exact",
        "variation",
        "adversarial",
        "accuracy_map",
        "flip_examples",
        "flip_rate",
        "mac",
    ]
    result = shiftaudit.run_plan(prepared)
    assert result.settings["engine"] == plan.strategy and result.settings["device_batch"] == plan.device_batch
    assert result.timing["forward_rows"] == plan.forward_rows


def test_audit_equals_plan_then_run():
    model, data = tiny_cnn(size=8), _data()
    a = shiftaudit.audit(model, data, max_shift=2, device="cpu", seed=3).to_json()
    b = shiftaudit.run_plan(shiftaudit.plan_audit(AuditConfig(max_shift=2, device="cpu", seed=3), model, data)).to_json()
    a.pop("timing", None), b.pop("timing", None)
    assert a == b


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"thresholds": build_thresholds(min_adv_accuracy=["3=0.5"])}, "asks for radius 3 but the shift set only reaches 2"),
        ({"thresholds": build_thresholds(max_variation=0.1), "mode": "sampled"}, "needs every shift evaluated"),
        ({"precision": "fp64"}, "Unknown `precision`"),
        ({"pairs": 0}, "`pairs` must be at least 1"),
        ({"shift_mode": "mirror"}, "Unknown `shift_mode` 'mirror'"),
        ({"layers": "auto", "shift_mode": "crop"}, "`layers` needs `shift_mode` circular"),
        ({"batch_size": 10**9}, "needs"),
    ],
)
def test_wrong_settings_are_refused_before_any_forward_pass(settings, message):
    model = Untouchable()
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        shiftaudit.plan_audit(AuditConfig(**{"max_shift": 2, "device": "cpu", **settings}), model, _data())
    assert model.calls == 0


def test_gate_from_python_passes_at_the_threshold_and_fails_just_above():
    result = shiftaudit.audit(tiny_cnn(size=8, spatial_head=True), _data(8), max_shift=2, device="cpu")
    value = result.metrics["consistency"]["exact"]["value"]
    assert 0 < value < 1
    assert shiftaudit.gate(result, {"min_consistency": value}).passed
    report = shiftaudit.gate(
        result,
        {
            "min_consistency": float(
                torch.nextafter(torch.tensor(value, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64))
            )
        },
    )
    assert not report.passed and report.failures[0].line().startswith("FAIL consistency ")
    with pytest.raises(UsageError) as err:
        shiftaudit.gate(result, {"min_flip": 0.5, "max_flip": 0.1})
    assert str(err.value) == (
        "Unknown thresholds max_flip, min_flip; use min_consistency, min_accuracy, max_variation, min_adv_accuracy."
    )


def test_thresholds_given_to_audit_are_judged_on_its_result():
    result = shiftaudit.audit(
        tiny_cnn(size=8),
        _data(),
        max_shift=2,
        device="cpu",
        thresholds=build_thresholds(min_consistency=0.0, min_adv_accuracy=["2=1.0"]),
    )
    checks = result.gate["checks"]
    assert [c["passed"] for c in checks] == [True, result.metrics["adversarial"]["accuracy"][-1] >= 1.0]


def test_eval_dry_run_shows_the_plan_runs_nothing_and_refuses_what_the_run_would(tmp_path):
    from tests.helpers import cli

    torch.manual_seed(0)
    ckpt, data = tmp_path / "m.pt", tmp_path / "d.pt"
    torch.save(tiny_cnn(size=8).state_dict(), ckpt)
    torch.save({"images": torch.rand(3, 3, 8, 8), "labels": torch.tensor([0, 1, 2])}, data)
    arch = ["--arch", "tests.helpers:tiny_cnn", "--arch-kwargs", '{"size": 8}', "--raw", "--device", "cpu"]
    res = cli(
        "eval",
        str(ckpt),
        *arch,
        "--data",
        str(data),
        "--max-shift",
        "2",
        "--dry-run",
        "--json",
        str(tmp_path / "plan.json"),
        "--out",
        str(tmp_path / "out"),
    )
    assert res.exit_code == 0, res.output
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["schema"] == "shiftaudit/audit-plan" and plan["plan"]["forward_rows"] == 3 * 25
    assert "Audit plan (dry run: nothing was run)" in res.stdout and not (tmp_path / "out").exists()
    res = cli("eval", str(ckpt), *arch, "--data", str(data), "--max-shift", "2", "--dry-run", "--min-adv-accuracy", "3=0.5")
    assert res.exit_code == 2 and "asks for radius 3 but the shift set only reaches 2" in res.stderr


def test_gate_mapping_builds_each_threshold_as_the_cli_flags_do():
    from shiftaudit.gating import Threshold

    result = shiftaudit.audit(tiny_cnn(size=8, spatial_head=True), _data(8), max_shift=2, device="cpu")
    report = shiftaudit.gate(
        result, {"min_consistency": 0.5, "min_accuracy": 0.25, "max_variation": 0.125, "min_adv_accuracy": {1: 0.75, 2: 0.0}}
    )
    assert [c.threshold for c in report.checks] == [
        Threshold("consistency", "min", 0.5),
        Threshold("accuracy", "min", 0.25),
        Threshold("variation", "max", 0.125),
        Threshold("adversarial", "min", 0.75, 1),
        Threshold("adversarial", "min", 0.0, 2),
    ]
    same = shiftaudit.gate(result, {"min_adv_accuracy": ["1=0.75"]})
    assert [c.threshold for c in same.checks] == [Threshold("adversarial", "min", 0.75, 1)]
    assert shiftaudit.gate(result, {}).checks == [] and shiftaudit.gate(result, {}).passed


def test_audit_takes_the_threshold_mapping_that_gate_takes():
    """shiftaudit.audit(thresholds=...) reads the mapping shiftaudit.gate and shiftaudit.testing take, and judges it
    exactly as gate() judges the same mapping on the same result."""
    mapping = {"min_consistency": 0.5, "min_accuracy": 0.25, "max_variation": 0.125, "min_adv_accuracy": {1: 0.75, 2: 0.0}}
    model, data = tiny_cnn(size=8, spatial_head=True), _data(8)
    result = shiftaudit.audit(model, data, max_shift=2, device="cpu", thresholds=mapping)
    assert result.gate == shiftaudit.gate(result, mapping).to_json()
    assert [c["flag"] for c in result.gate["checks"]] == [
        "--min-consistency 0.5",
        "--min-accuracy 0.25",
        "--max-variation 0.125",
        "--min-adv-accuracy 1=0.75",
        "--min-adv-accuracy 2=0",
    ]
    assert AuditConfig(thresholds=mapping).thresholds == tuple(build_thresholds(0.5, 0.25, 0.125, ["1=0.75", "2=0"]))


@pytest.mark.parametrize(
    "thresholds, message",
    [
        ({"max_variation": float("inf")}, "max_variation takes a finite number, got inf."),
        ({"min_consistency": float("nan")}, "min_consistency takes a number, got nan."),
        ({"min_flips": 0.5}, "Unknown thresholds min_flips"),
    ],
)
def test_audit_refuses_bad_threshold_mappings_before_any_forward_pass(thresholds, message):
    model = Untouchable()
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        shiftaudit.audit(model, _data(), max_shift=2, device="cpu", thresholds=thresholds)
    assert model.calls == 0


@pytest.mark.parametrize(
    "thresholds, flag",
    [
        ({"min_consistency": 0.9}, "--min-consistency 0.9"),
        ({"max_variation": 0.05}, "--max-variation 0.05"),
    ],
)
@pytest.mark.parametrize("mode", ["auto", "sampled"])
def test_a_gate_on_the_zero_shift_alone_is_refused_before_any_forward_pass(thresholds, flag, mode):
    model = Untouchable()
    with pytest.raises(UsageError, match=f"^{flag} would pass on nothing: the shift set holds only the zero shift"):
        shiftaudit.plan_audit(AuditConfig(max_shift=0, mode=mode, device="cpu", thresholds=thresholds), model, _data())
    assert model.calls == 0
    with pytest.raises(UsageError, match="would pass on nothing"):  # a set of one given as offsets: the same
        shiftaudit.audit(
            model,
            _data(),
            shifts=shiftaudit.ShiftSet.from_offsets((8, 8), [(0, 0), (8, -8)]),
            device="cpu",
            thresholds=thresholds,
        )
    assert model.calls == 0


def test_one_shift_audits_accuracy_and_leaves_out_what_compares_shifts():
    """Max shift 0: accuracy and the adversarial curve at r = 0 (= accuracy) are measured, and may be
    gated; consistency, variation, flip rate, MAC, random-shift accuracy, the accuracy map and flip examples would read
    perfect for any model: left out, with one note that says why."""
    result = shiftaudit.audit(
        tiny_cnn(size=8, spatial_head=True),
        _data(8),
        max_shift=0,
        device="cpu",
        thresholds={"min_accuracy": 0.0, "min_adv_accuracy": {0: 0.0}},
    )
    assert sorted(result.metrics) == ["accuracy", "adversarial"]
    assert list(result.metrics["accuracy"]) == ["none"] and result.metrics["adversarial"]["radius"] == [0]
    assert result.metrics["adversarial"]["accuracy"] == [result.metrics["accuracy"]["none"]["value"]]
    assert result.gate["passed"] is True
    assert [n for n in result.notes if "only the zero shift" in n] == [
        "only the zero shift was evaluated (max shift 0): consistency, variation, flip rate and the other metrics that "
        "compare an image's shifted copies are not reported, since each would read perfect for any model; raise "
        "--max-shift to measure them"
    ]
    two = shiftaudit.audit(tiny_cnn(size=8, spatial_head=True), _data(8), max_shift=1, device="cpu")
    assert {"consistency", "variation", "flip_rate", "mac", "accuracy_map"} <= set(two.metrics)
    assert not [n for n in two.notes if "only the zero shift" in n]
