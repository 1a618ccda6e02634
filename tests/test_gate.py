"""The gate's parsing, validation, estimator choice and the exact line each check prints.

A CI log shows these lines and a JUnit page shows these names; they are compared character for character, and each
refusal is checked for the flag it names.
"""

from __future__ import annotations

import copy
import math

import pytest

from shiftaudit.errors import UsageError
from shiftaudit.gating import (
    Check,
    GateReport,
    Threshold,
    build_thresholds,
    evaluate_gate,
    parse_adv_threshold,
    sequential_gate,
    validate_thresholds,
)
from tests.helpers import synthetic_result


def test_flags_and_labels_name_the_option_a_user_typed():
    assert Threshold("consistency", "min", 0.95).flag == "--min-consistency 0.95"
    assert Threshold("accuracy", "min", 0.5).flag == "--min-accuracy 0.5"
    assert Threshold("variation", "max", 0.025).flag == "--max-variation 0.025"
    adv = Threshold("adversarial", "min", 0.8, 4)
    assert adv.flag == "--min-adv-accuracy 4=0.8"
    assert adv.label == "adversarial accuracy at r=4" and Threshold("variation", "max", 0.1).label == "variation"


def test_check_lines_character_for_character():
    ok = Check(Threshold("consistency", "min", 0.9), 0.91234, 0.9, 0.93, True, "exact consistency")
    assert ok.line() == "ok   consistency 0.9123 (95% CI 0.9000-0.9300) >= 0.9 (--min-consistency 0.9)"
    fail = Check(Threshold("consistency", "min", 0.95), 0.91234, 0.9, 0.93, False, "exact consistency")
    assert fail.line() == "FAIL consistency 0.9123 (95% CI 0.9000-0.9300) < 0.95 (--min-consistency 0.95)"
    vmax = Check(Threshold("variation", "max", 0.01), 0.02, None, None, False, "mean classification variation")
    assert vmax.line() == "FAIL variation 0.0200 > 0.01 (--max-variation 0.01)"
    vok = Check(Threshold("variation", "max", 0.05), 0.02, 0.01, None, True, "mean classification variation")
    assert vok.line() == "ok   variation 0.0200 <= 0.05 (--max-variation 0.05)"  # a half interval is not shown


def test_check_json_carries_everything_the_line_says():
    check = Check(Threshold("adversarial", "min", 0.5, 2), 0.625, 0.5, 0.7, True, "max-shift adversarial accuracy at r=2")
    assert check.to_json() == {
        "threshold": {"metric": "adversarial", "bound": "min", "value": 0.5, "radius": 2},
        "value": 0.625,
        "ci_low": 0.5,
        "ci_high": 0.7,
        "passed": True,
        "estimator": "max-shift adversarial accuracy at r=2",
        "flag": "--min-adv-accuracy 2=0.5",
        "message": "ok   adversarial accuracy at r=2 0.6250 (95% CI 0.5000-0.7000) >= 0.5 (--min-adv-accuracy 2=0.5)",
    }


def test_gate_report_passes_only_when_every_check_does():
    good = Check(Threshold("accuracy", "min", 0.5), 0.6, None, None, True, "a")
    bad = Check(Threshold("accuracy", "min", 0.7), 0.6, None, None, False, "a")
    assert GateReport([good]).passed and GateReport([]).passed
    report = GateReport([good, bad])
    assert not report.passed and report.failures == [bad]
    assert report.to_json() == {"passed": False, "checks": [good.to_json(), bad.to_json()]}


@pytest.mark.parametrize(
    ("text", "radius", "value"), [("4=0.8", 4, 0.8), (" 0 = 1 ", 0, 1.0), ("16=0", 16, 0.0), ("2=.5", 2, 0.5)]
)
def test_adversarial_thresholds_parse(text, radius, value):
    t = parse_adv_threshold(text)
    assert (t.metric, t.bound, t.radius, t.value) == ("adversarial", "min", radius, value)


@pytest.mark.parametrize("text", ["4", "=0.8", "a=0.5", "4=x", "4=0.5=1", "-1=0.5", "4=-0.5", ""])
def test_malformed_adversarial_thresholds_are_refused(text):
    with pytest.raises(UsageError, match="--min-adv-accuracy"):
        parse_adv_threshold(text)


def test_fractions_outside_0_1_are_refused_naming_the_flag():
    for kwargs, flag in (
        (dict(min_consistency=1.5), "--min-consistency"),
        (dict(min_accuracy=-0.1), "--min-accuracy"),
        (dict(min_adv_accuracy=["2=1.01"]), "--min-adv-accuracy"),
    ):
        with pytest.raises(UsageError, match=f"{flag} takes a fraction between 0 and 1"):
            build_thresholds(**kwargs)
    with pytest.raises(UsageError, match="--max-variation must be >= 0"):
        build_thresholds(max_variation=-0.001)
    assert build_thresholds() == []
    edge = build_thresholds(min_consistency=0.0, min_accuracy=1.0)
    assert [t.value for t in edge] == [0.0, 1.0]


def test_validation_refuses_what_the_run_cannot_measure():
    acc, var = Threshold("accuracy", "min", 0.5), Threshold("variation", "max", 0.1)
    adv, cons = Threshold("adversarial", "min", 0.5, 3), Threshold("consistency", "min", 0.9)
    validate_thresholds([acc, var, adv, cons], labelled=True, exhaustive=True, radii=[0, 1, 2, 3])
    validate_thresholds([cons], labelled=False, exhaustive=False, radii=None)
    validate_thresholds([adv], labelled=True, exhaustive=True, radii=None)
    for t in (acc, var, adv):
        with pytest.raises(UsageError, match=f"{t.flag} needs labelled data, but the data has no labels"):
            validate_thresholds([t], labelled=False, exhaustive=True, radii=[0, 1, 2, 3])
    for t in (var, adv):
        with pytest.raises(UsageError, match=f"{t.flag} needs every shift evaluated"):
            validate_thresholds([t], labelled=True, exhaustive=False, radii=[0, 1, 2, 3])
    validate_thresholds([acc], labelled=True, exhaustive=False, radii=[0, 1, 2, 3])
    with pytest.raises(UsageError, match="asks for radius 3 but the shift set only reaches 2; raise --max-shift"):
        validate_thresholds([adv], labelled=True, exhaustive=True, radii=[0, 1, 2])
    # a step-4 grid evaluates radii 0, 4, 8: radius 3 was never tested, and the sentence names the nearest ones
    with pytest.raises(
        UsageError,
        match=r"--min-adv-accuracy 3=0.5 asks for radius 3, which the shift set does not evaluate "
        r"\(its radii are 0, 4, 8\); gate on the nearest evaluated radius \(0 or 4\) or pass --shift-step 1\.",
    ):
        validate_thresholds([adv], labelled=True, exhaustive=True, radii=[0, 4, 8])


def test_each_threshold_reads_its_own_metric_and_estimator():
    result = synthetic_result()
    m = result.metrics
    gate = evaluate_gate(
        result, build_thresholds(min_consistency=0.5, min_accuracy=0.5, max_variation=1.0, min_adv_accuracy=["2=0.1"])
    )
    got = [(c.value, c.ci_low, c.ci_high, c.estimator) for c in gate.checks]
    assert got == [
        (
            m["consistency"]["exact"]["value"],
            m["consistency"]["exact"]["ci_low"],
            m["consistency"]["exact"]["ci_high"],
            "exact consistency",
        ),
        (
            m["accuracy"]["none"]["value"],
            m["accuracy"]["none"]["ci_low"],
            m["accuracy"]["none"]["ci_high"],
            "top-1 accuracy without shift",
        ),
        (m["variation"]["mean"], m["variation"]["ci_low"], m["variation"]["ci_high"], "mean classification variation"),
        (
            m["adversarial"]["accuracy"][2],
            m["adversarial"]["ci_low"][2],
            m["adversarial"]["ci_high"][2],
            "max-shift adversarial accuracy at r=2",
        ),
    ]
    assert all(isinstance(c.passed, bool) for c in gate.checks)


def test_sampled_consistency_gates_when_no_exact_value_exists():
    result = synthetic_result()
    del result.metrics["consistency"]["exact"]
    (check,) = evaluate_gate(result, build_thresholds(min_consistency=0.9)).checks
    sampled = result.metrics["consistency"]["sampled"]
    assert (check.value, check.ci_low, check.ci_high, check.estimator) == (
        sampled["value"],
        sampled["ci_low"],
        sampled["ci_high"],
        "sampled consistency",
    )
    assert check.passed is (sampled["value"] >= 0.9)


def test_thresholds_on_missing_metrics_are_refused():
    result = synthetic_result()
    bare = copy.deepcopy(result)
    for key in ("accuracy", "variation", "adversarial", "consistency"):
        del bare.metrics[key]
    for kwargs, needle in (
        (dict(min_consistency=0.5), "--min-consistency 0.5 needs classification consistency, which the report does not have"),
        (dict(min_accuracy=0.5), "--min-accuracy 0.5 needs labelled data, but the data has no labels"),
        (dict(max_variation=0.5), "--max-variation 0.5 needs labelled data and every shift evaluated"),
        (dict(min_adv_accuracy=["1=0.5"]), "--min-adv-accuracy 1=0.5 needs labelled data and every shift evaluated"),
    ):
        with pytest.raises(UsageError, match=needle):
            evaluate_gate(bare, build_thresholds(**kwargs))
    with pytest.raises(
        UsageError, match=r"--min-adv-accuracy 9=0.5 asks for radius 9 but the shift set only reaches 3; raise --max-shift"
    ):
        evaluate_gate(result, build_thresholds(min_adv_accuracy=["9=0.5"]))


def test_failing_and_passing_checks_in_one_report():
    result = synthetic_result()  # accuracy 0.9, exact consistency 0.92
    gate = evaluate_gate(result, build_thresholds(min_consistency=0.95, min_accuracy=0.9))
    assert [c.passed for c in gate.checks] == [False, True] and not gate.passed
    assert gate.failures[0].line().startswith("FAIL consistency 0.9200")
    assert math.isclose(gate.checks[1].value, 0.9)


def test_a_registered_gate_metric_is_judged_like_the_built_in_ones():
    from shiftaudit.gating import _GATES, GateMetric, Threshold, gate, register_gate

    register_gate(
        GateMetric(
            "toy",
            needs_labels=False,
            needs_all_shifts=False,
            read=lambda m, t: (m["accuracy"]["none"]["value"], None, None, "toy estimator"),
        )
    )
    try:
        result = synthetic_result()
        value = result.metrics["accuracy"]["none"]["value"]
        report = gate(result, [Threshold("toy", "min", value), Threshold("toy", "max", value / 2)])
        assert [c.passed for c in report.checks] == [True, False] and report.checks[0].estimator == "toy estimator"
    finally:
        _GATES.pop("toy")


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("min_consistency", "thresholds takes a mapping such as {'min_consistency': 0.95} or a list of Threshold, got str."),
        (0.95, "thresholds takes a mapping such as {'min_consistency': 0.95} or a list of Threshold, got float."),
        ([0.95], "thresholds lists shiftaudit.Threshold values, got a float."),
        ({"min_consistency": "0.9"}, "min_consistency takes a number, got '0.9'."),
        ({"min_consistency": True}, "min_consistency takes a number, got True."),
        ({"min_accuracy": float("nan")}, "min_accuracy takes a number, got nan."),
        ({"min_accuracy": 1.5}, "min_accuracy takes a fraction between 0 and 1 (e.g. 0.95), got 1.5."),
        (
            {"max_variation": None, "min_consistency": -0.1},
            "min_consistency takes a fraction between 0 and 1 (e.g. 0.95), got -0.1.",
        ),
        ({"max_variation": "x"}, "max_variation takes a number, got 'x'."),
        ({"max_variation": -0.5}, "max_variation must be >= 0, got -0.5."),
        ({"min_adv_accuracy": 0.9}, "min_adv_accuracy takes a mapping radius -> fraction such as {2: 0.8}, got 0.9."),
        ({"min_adv_accuracy": {-1: 0.9}}, "min_adv_accuracy takes whole radii >= 0 in px as keys, got -1."),
        ({"min_adv_accuracy": {True: 0.9}}, "min_adv_accuracy takes whole radii >= 0 in px as keys, got True."),
        ({"min_adv_accuracy": {1.0: 0.9}}, "min_adv_accuracy takes whole radii >= 0 in px as keys, got 1.0."),
        ({"min_adv_accuracy": {2: 2.0}}, "min_adv_accuracy[2] takes a fraction between 0 and 1 (e.g. 0.95), got 2."),
        ({"min_adv_accuracy": {2: None}}, "min_adv_accuracy[2] takes a number, got None."),
    ],
)
def test_python_thresholds_are_refused_in_one_sentence_naming_the_key(given, message):
    from shiftaudit.gating import thresholds_from

    with pytest.raises(UsageError) as err:
        thresholds_from(given)
    assert str(err.value) == message


def test_python_thresholds_accept_the_edges_and_both_adversarial_forms():
    from shiftaudit.gating import Threshold, thresholds_from

    assert thresholds_from({"max_variation": 0, "min_adv_accuracy": {0: 0.0, 3: 1}}) == [
        Threshold("variation", "max", 0.0),
        Threshold("adversarial", "min", 0.0, 0),
        Threshold("adversarial", "min", 1.0, 3),
    ]
    # the CLI's RADIUS=FRACTION strings add to the other thresholds, they do not replace them
    assert thresholds_from({"min_consistency": 1, "min_adv_accuracy": ["2=0.5"]}) == [
        Threshold("consistency", "min", 1.0),
        Threshold("adversarial", "min", 0.5, 2),
    ]
    given = [Threshold("accuracy", "min", 0.5)]
    assert thresholds_from(given) == given and thresholds_from({}) == [] and thresholds_from([]) == []


def test_sequential_checks_carry_each_statistic_and_name_their_estimator():
    class Statistic:  # what the sequential engine hands over: a threshold and its decided confidence sequence
        def __init__(self, threshold: Threshold, decision: str) -> None:
            self.threshold, self.decision = threshold, decision

        def to_json(self) -> dict:
            return {
                "estimate": 0.95,
                "ci_low": 0.93,
                "ci_high": 0.97,
                "decision": self.decision,
                "confidence": 0.995,
                "draws": 120,
            }

    consistency, accuracy = build_thresholds(0.9, 0.99)
    report = sequential_gate([Statistic(consistency, "pass"), Statistic(accuracy, "fail")])
    got = [(c.value, c.ci_low, c.ci_high, c.passed, c.estimator, c.confidence, c.draws) for c in report.checks]
    assert got == [
        (0.95, 0.93, 0.97, True, "sequential estimate of consistency", 0.995, 120),
        (0.95, 0.93, 0.97, False, "sequential estimate of accuracy", 0.995, 120),
    ]
    assert not report.passed and report.checks[0].to_json()["estimator"] == "sequential estimate of consistency"


def test_a_threshold_on_a_metric_without_a_gate_names_the_gated_ones():
    message = r"^No gate on 'flip_rate'; thresholds exist for consistency, accuracy, variation, adversarial\.$"
    with pytest.raises(UsageError, match=message):
        evaluate_gate(synthetic_result(), [Threshold("flip_rate", "min", 0.5)])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: build_thresholds(max_variation=math.inf), "--max-variation takes a finite number >= 0 (e.g. 0.05), got inf."),
        (lambda: build_thresholds(max_variation=math.nan), "--max-variation takes a finite number >= 0 (e.g. 0.05), got nan."),
        (lambda: build_thresholds(min_consistency=math.nan), "--min-consistency takes a fraction between 0 and 1"),
        (lambda: build_thresholds(min_accuracy=math.inf), "--min-accuracy takes a fraction between 0 and 1"),
        (lambda: build_thresholds(min_adv_accuracy=["2=."]), "--min-adv-accuracy takes RADIUS=FRACTION (e.g. 4=0.8), got '2=.'."),
        (lambda: build_thresholds(min_adv_accuracy=["2=1.2.3"]), "--min-adv-accuracy takes RADIUS=FRACTION"),
        (lambda: build_thresholds(min_adv_accuracy=["2=nan"]), "--min-adv-accuracy takes RADIUS=FRACTION"),
    ],
    ids=["variation-inf", "variation-nan", "consistency-nan", "accuracy-inf", "adv-dot", "adv-dots", "adv-nan"],
)
def test_every_threshold_flag_refuses_nan_and_inf(make, message):
    """inf as a maximum passes every model, nan as either bound none: both are refused with the flag's name (a bare
    '2=.' was a ValueError, i.e. an internal error)."""
    with pytest.raises(UsageError) as err:
        make()
    assert str(err.value).startswith(message)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"max_variation": math.inf}, "max_variation takes a finite number, got inf."),
        ({"min_consistency": -math.inf}, "min_consistency takes a finite number, got -inf."),
        ({"min_adv_accuracy": {1: math.inf}}, "min_adv_accuracy[1] takes a finite number, got inf."),
        ([Threshold("variation", "max", math.inf)], "Threshold('variation', 'max') takes a finite number, got inf."),
        ([Threshold("consistency", "min", math.nan)], "Threshold('consistency', 'min') takes a number, got nan."),
        (
            [Threshold("accuracy", "min", 1.5)],
            "Threshold('accuracy', 'min') takes a fraction between 0 and 1 (e.g. 0.95), got 1.5.",
        ),
        ([Threshold("variation", "max", -0.1)], "Threshold('variation', 'max') must be >= 0, got -0.1."),
        ([Threshold("adversarial", "min", 0.5, -1)], "Threshold('adversarial', 'min') takes a whole radius >= 0 in px, got -1."),
        ([Threshold("consistency", "at least", 0.5)], "A Threshold's bound is 'min' or 'max', got 'at least'."),
    ],
)
def test_python_thresholds_refuse_non_finite_values_and_bad_threshold_objects(given, message):
    """The mapping and a list of Threshold objects are checked like the flags: shiftaudit.gate, shiftaudit.audit and
    shiftaudit.testing all read them through thresholds_from."""
    from shiftaudit.gating import thresholds_from

    with pytest.raises(UsageError) as err:
        thresholds_from(given)
    assert str(err.value) == message


def test_a_gate_the_zero_shift_alone_makes_true_is_refused():
    """With the zero shift alone every image agrees with itself: consistency is 1 and variation 0 for any model, so
    a gate on them would pass on nothing. Accuracy and adversarial accuracy at radius 0 (= accuracy) still measure."""
    from shiftaudit.gating import refuse_trivial_thresholds

    cons, var = build_thresholds(min_consistency=0.9, max_variation=0.05)
    for t, value in ((cons, "consistency is 1"), (var, "variation is 0")):
        with pytest.raises(UsageError) as err:
            refuse_trivial_thresholds([t], 1)
        assert str(err.value) == (
            f"{t.flag} would pass on nothing: the shift set holds only the zero shift (max shift 0), where {value} for "
            "every model; raise --max-shift."
        )
        refuse_trivial_thresholds([t], 2)  # two shifts: measured
    refuse_trivial_thresholds(build_thresholds(min_accuracy=0.5, min_adv_accuracy=["0=0.5"]), 1)
