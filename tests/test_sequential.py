"""The sequential gate: an anytime-valid betting confidence sequence, and gate verdicts equal to the full audit's from
fewer forward passes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from shiftaudit.engine.betting import TRUNCATION, BettingSequence, bet_sizes, bounds
from shiftaudit.engine.runner import audit
from shiftaudit.errors import UsageError
from shiftaudit.gating import build_thresholds
from shiftaudit.report.sequential import sequential_rows
from shiftaudit.rng import STREAM_SEQUENTIAL_IMAGE, uniform_integers
from shiftaudit.shifts.sets import ShiftSet
from tests.helpers import cli, tiny_cnn

# -- the confidence sequence ----------------------------------------------------------------------------------------


def _naive_log_capital(x: list[float], alpha: float, m: float, up: bool) -> float:
    """K+(m) (or K-(m)) written out term by term, from the definitions in the module docstring."""
    log_k, total, sq = 0.0, 0.0, 0.0
    mu_prev, var_prev = 0.5, 0.25
    for t, xi in enumerate(x, start=1):
        lam = math.sqrt(2 * math.log(2 / alpha) / (var_prev * t * math.log(1 + t)))
        cap = TRUNCATION / m if up else TRUNCATION / (1 - m)
        bet = min(lam, cap)
        log_k += math.log(1 + bet * (xi - m)) if up else math.log(1 - bet * (xi - m))
        total += xi
        sq += (xi - mu_prev) ** 2
        mu_prev, var_prev = (0.5 + total) / (t + 1), (0.25 + sq) / (t + 1)
    return log_k


def test_bounds_equal_the_capital_written_out_term_by_term():
    rng = np.random.default_rng(0)
    x = (rng.random(60) < 0.8).astype(float)
    x[::7] = rng.random(9)  # not only 0/1: any value in [0, 1]
    alpha = 0.1
    low, high = bounds(x, alpha)
    level = math.log(2 / alpha)
    # just inside the interval the capital is below the level; just outside it is at or above it
    xs = list(x)
    assert _naive_log_capital(xs, alpha, low + 1e-9, up=True) < level <= _naive_log_capital(xs, alpha, low - 1e-6, up=True)
    assert _naive_log_capital(xs, alpha, high - 1e-9, up=False) < level <= _naive_log_capital(xs, alpha, high + 1e-6, up=False)
    assert 0 < low < x.mean() < high < 1


def test_first_bet_uses_the_prior_variance_and_later_bets_only_the_past():
    x = np.array([1.0, 0.0, 1.0, 1.0])
    lam = bet_sizes(x, 0.05)
    assert lam[0] == pytest.approx(math.sqrt(2 * math.log(40) / (0.25 * 1 * math.log(2))))
    changed = x.copy()
    changed[2] = 0.0
    assert np.array_equal(bet_sizes(changed, 0.05)[:3], lam[:3])  # bet t does not see observation t


def test_no_observation_gives_the_whole_unit_interval_and_bad_input_is_refused():
    assert bounds(np.zeros(0), 0.05) == (0.0, 1.0)
    s = BettingSequence(0.05)
    s.extend(np.zeros(0))
    assert (s.low, s.high, s.count) == (0.0, 1.0, 0)
    assert math.isnan(s.mean)
    with pytest.raises(ValueError) as err:
        s.extend(np.array([0.5, 1.5]))
    assert str(err.value) == "betting observations must lie in [0, 1]"
    for alpha in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="alpha"):
            BettingSequence(alpha)


def test_the_running_interval_only_narrows_and_holds_the_mean_of_a_constant_stream():
    s = BettingSequence(0.05)
    widths = []
    for _ in range(20):
        s.extend(np.full(50, 0.7))
        widths.append(s.high - s.low)
        assert s.low <= 0.7 <= s.high
    assert all(b <= a for a, b in zip(widths, widths[1:]))
    assert widths[-1] < 0.1
    assert s.mean == pytest.approx(0.7) and s.count == 1000


def test_one_observation_at_a_time_counts_and_an_empty_batch_changes_nothing():
    one_by_one, at_once = BettingSequence(0.05), BettingSequence(0.05)
    stream = [1.0, 0.0, 1.0, 1.0, 0.5]
    for x in stream:
        one_by_one.extend(np.array([x]))
    at_once.extend(np.array(stream))
    assert (one_by_one.count, one_by_one.total) == (at_once.count, at_once.total) == (5, 3.5)
    before = (one_by_one.count, one_by_one.low, one_by_one.high)
    one_by_one.extend(np.array([]))
    assert (one_by_one.count, one_by_one.low, one_by_one.high) == before


@pytest.mark.slow
@pytest.mark.parametrize("p", [0.5, 0.95])
def test_anytime_coverage_by_simulation(p):
    """Looked at after every 50 observations up to 500, the interval misses the true mean at some look in at most
    alpha of the runs (Ville's inequality); a fixed-sample interval looked at 10 times would miss more often."""
    alpha, runs = 0.2, 200
    rng = np.random.default_rng(int(p * 100))
    missed = 0
    for _ in range(runs):
        s = BettingSequence(alpha)
        stream = (rng.random(500) < p).astype(float)
        for k in range(0, 500, 50):
            s.extend(stream[k : k + 50])
            if not s.low <= p <= s.high:
                missed += 1
                break
    assert missed / runs <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs)


def test_a_margin_of_five_points_is_decided_in_a_few_hundred_draws():
    rng = np.random.default_rng(1)
    for p, threshold, side in ((0.90, 0.95, "below"), (0.99, 0.94, "above")):
        s = BettingSequence(0.01)
        while not (s.below(threshold) or s.above(threshold)):
            s.extend((rng.random(32) < p).astype(float))
        assert getattr(s, side)(threshold)
        assert s.count <= 1500


# -- the gate on a model --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zero_padded():
    """A zero-padded net (the polyphase engine does not apply) with labels it gets right two times in three."""
    torch.manual_seed(3)
    model = tiny_cnn(num_classes=4, size=16).eval()
    x = torch.randn(200, 3, 16, 16)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::3] = (y[::3] + 1) % 4
    shifts = ShiftSet.window((16, 16), 4)
    full = audit(model, (x, y), shifts=shifts, device="cpu")
    return model, x, y, shifts, full


def _gate(model, x, y, shifts, thresholds, **kw):
    return audit(model, (x, y), shifts=shifts, device="cpu", thresholds=thresholds, sequential=True, **kw)


@pytest.mark.slow
def test_verdicts_agree_with_the_full_audit_from_fewer_forward_passes(zero_padded):
    model, x, y, shifts, full = zero_padded
    exact = {
        "consistency": full.metrics["consistency"]["exact"]["value"],
        "accuracy": full.metrics["accuracy"]["none"]["value"],
        "adversarial": full.adversarial_accuracy(2),
        "variation": full.metrics["variation"]["mean"],
    }
    assert (round(exact["consistency"], 4), exact["accuracy"], exact["adversarial"]) == (0.9728, 0.665, 0.545)
    passing = build_thresholds(0.9, 0.5, None, ["2=0.4"])
    failing = build_thresholds(0.995, 0.8, None, ["2=0.75"])
    for thresholds, verdict in ((passing, True), (failing, False)):
        for seed in range(3):
            r = _gate(model, x, y, shifts, thresholds, seed=seed)
            assert r.settings["engine"] == "sequential"
            assert [c["passed"] for c in r.gate["checks"]] == [verdict] * len(thresholds)
            seq = r.metrics["sequential"]
            assert seq["forward_rows"] < seq["forward_rows_exhaustive"] == full.timing["forward_rows"]
            assert r.timing["forward_rows"] == seq["forward_rows"]
            for stat, check in zip(seq["statistics"], r.gate["checks"]):
                assert stat["ci_low"] <= exact[stat["metric"]] <= stat["ci_high"]
                assert (check["value"], check["ci_low"], check["ci_high"]) == (stat["estimate"], stat["ci_low"], stat["ci_high"])
                assert check["confidence"] == stat["confidence"] == 1 - 0.01 / len(thresholds)


def test_variation_is_decided_from_whole_images(zero_padded):
    """Each variation draw needs every shift of its image: on 200 images that pays only with a wide margin and the
    whole budget, and the verdict is still the full audit's."""
    model, x, y, shifts, full = zero_padded
    assert round(full.metrics["variation"]["mean"], 4) == 0.0032
    r = _gate(model, x, y, shifts, build_thresholds(None, None, 0.05), sequential_budget=1.0)
    assert r.settings["engine"] == "sequential" and r.gate["passed"]
    seq = r.metrics["sequential"]
    assert seq["forward_rows"] == 81 * seq["images_seen"] < seq["forward_rows_exhaustive"]


def test_same_seed_same_report_and_another_seed_other_draws(zero_padded):
    model, x, y, shifts, full = zero_padded
    thresholds = build_thresholds(full.metrics["consistency"]["exact"]["value"] - 0.2)
    a, b = (_gate(model, x, y, shifts, thresholds, seed=5).to_json() for _ in range(2))
    c = _gate(model, x, y, shifts, thresholds, seed=6).to_json()
    for r in (a, b, c):
        r.pop("environment")
    assert json.dumps(a) == json.dumps(b)
    assert a["metrics"] != c["metrics"]


def test_a_threshold_at_the_exact_value_falls_back_to_the_full_audit(zero_padded):
    model, x, y, shifts, full = zero_padded
    thresholds = build_thresholds(full.metrics["consistency"]["exact"]["value"])
    r = _gate(model, x, y, shifts, thresholds, sequential_budget=0.1)
    assert r.settings["engine"] != "sequential" and r.gate["passed"]
    assert r.metrics == full.metrics
    assert any(n.startswith("sequential gate undecided after") and "the full audit decided" in n for n in r.notes)
    assert r.timing["forward_rows"] == full.timing["forward_rows"]  # the full audit's own count


def test_an_accuracy_threshold_at_its_exact_value_stops_drawing_and_the_full_audit_decides(zero_padded):
    """Only the zero shift is drawn for accuracy, so the forward budget is never reached: the draw cap ends it."""
    model, x, y, shifts, full = zero_padded
    r = _gate(model, x, y, shifts, build_thresholds(None, full.metrics["accuracy"]["none"]["value"]))
    assert r.settings["engine"] != "sequential" and r.gate["passed"]
    assert any(n.startswith("sequential gate undecided after 200 forward passes (1 %") for n in r.notes)


def test_the_gate_reads_the_cached_predictions_like_the_full_audit(zero_padded):
    """Each adversarial and variation observation equals the per-image value of the full audit."""
    from shiftaudit.engine.config import AuditConfig
    from shiftaudit.engine.plan import plan_audit
    from shiftaudit.engine.sequential import SequentialGate

    model, x, y, shifts, full = zero_padded
    thresholds = tuple(build_thresholds(None, None, 0.9, ["3=0.01"]))
    prepared = plan_audit(AuditConfig(shifts=shifts, device="cpu", thresholds=thresholds, sequential=True), model, (x, y))
    gate = SequentialGate(prepared, 0.01, 1.0)
    with torch.inference_mode():
        gate._round(16)
    first = dict(zip(full.per_image["image_id"], full.per_image["first_failure_radius"]))
    variation = dict(zip(full.per_image["image_id"], full.per_image["variation"]))
    seen = sorted(gate.cache.pred)
    adv = [o for o in gate.stats if o.threshold.metric == "adversarial"][0]
    var = [o for o in gate.stats if o.threshold.metric == "variation"][0]
    for img in seen:
        fails = first[img] is not None and first[img] <= 3
        assert gate._observe(adv.threshold, np.array([img]), np.zeros((1, 2), dtype=np.int64))[0] == float(not fails)
        got = gate._observe(var.threshold, np.array([img]), np.zeros((1, 2), dtype=np.int64))[0]
        assert got == pytest.approx(variation[img], abs=1e-12)
    # variation (a std of a probability, at most 1/2) enters its sequence doubled, to use the whole of [0, 1]
    drawn = uniform_integers(0, STREAM_SEQUENTIAL_IMAGE, np.arange(16), 1, x.shape[0])[:, 0]
    fed = np.concatenate(var.sequence.observations)
    assert fed == pytest.approx([2 * variation[int(i)] for i in drawn], abs=1e-12)
    assert var.to_json()["estimate"] == pytest.approx(np.mean([variation[int(i)] for i in drawn]), abs=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ({"layers": "auto"}, "per-layer distances need every shift"),
        ({"resume": "state.pt"}, "--resume saves the progress of the full audit"),
    ],
)
def test_the_full_audit_decides_when_the_sequential_gate_cannot(zero_padded, tmp_path, extra, why):
    model, x, y, shifts, full = zero_padded
    if "resume" in extra:
        extra = {"resume": tmp_path / "state.pt"}
    thresholds = build_thresholds(0.1)
    r = _gate(model, x, y, shifts, thresholds, **extra)
    assert r.settings["engine"] != "sequential"
    assert f"sequential gate not used ({why}); the full audit decides" in r.notes


def test_a_small_audit_and_a_polyphase_model_go_straight_to_the_full_audit():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 16, 16)
    small = audit(
        tiny_cnn(), x, shifts=ShiftSet.window((16, 16), 2), device="cpu", thresholds=build_thresholds(0.1), sequential=True
    )
    assert "sequential gate not used (the full audit needs only 100 forward passes); the full audit decides" in small.notes
    circular = tiny_cnn(padding_mode="circular")
    poly = audit(
        circular,
        torch.randn(8, 3, 16, 16),
        shifts=ShiftSet.all_shifts((16, 16)),
        device="cpu",
        thresholds=build_thresholds(0.1),
        sequential=True,
    )
    assert poly.settings["engine"] == "polyphase"
    assert any(n.startswith("sequential gate not used (the polyphase engine") for n in poly.notes)


def test_settings_are_checked_before_any_work():
    x = torch.randn(4, 3, 16, 16)
    with pytest.raises(UsageError, match="give at least one"):
        audit(tiny_cnn(), x, device="cpu", sequential=True)
    for bad in (0.0, 0.6):
        with pytest.raises(UsageError, match="`decision_error`"):
            audit(tiny_cnn(), x, device="cpu", sequential=True, thresholds=build_thresholds(0.5), decision_error=bad)
    with pytest.raises(UsageError, match="budget"):
        audit(tiny_cnn(), x, device="cpu", sequential=True, thresholds=build_thresholds(0.5), sequential_budget=1.5)


# -- the CLI --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory, zero_padded):
    model, x, y, shifts, full = zero_padded
    root = tmp_path_factory.mktemp("seq")
    from tests.helpers import write_models_module  # noqa: F401 - the factory file is written below

    (root / "seqnet.py").write_text(
        "from tests.helpers import tiny_cnn\n\n\ndef build(num_classes=4):\n"
        "    return tiny_cnn(num_classes=num_classes, size=16)\n"
    )
    torch.save(model.state_dict(), root / "model.pt")
    torch.save({"images": x, "labels": y}, root / "data.pt")
    return root, full


def _eval(root, *args, data=("--data", "data.pt", "--raw")):
    import os

    cwd = os.getcwd()
    os.chdir(root)
    try:
        return cli(
            "eval", "model.pt", "--arch", "seqnet:build", *data, "--max-shift", "4", "--shift-step", "1", "--device", "cpu", *args
        )
    finally:
        os.chdir(cwd)


def test_cli_gate_only_run_is_sequential_and_prints_what_its_json_says(model_and_data):
    root, full = model_and_data
    assert full.metrics["consistency"]["exact"]["value"] < 0.975
    res = _eval(root, "--min-consistency", "0.995", "--json", "seq.json", "--junit", "seq.xml")
    assert res.exit_code == 1, res.output
    report = json.loads((root / "seq.json").read_text())
    assert report["settings"]["engine"] == "sequential"
    stat = report["metrics"]["sequential"]["statistics"][0]
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("Consistency")][0]
    cells = [c.strip() for c in line.replace("│", "|").split("|")]
    assert cells == [
        "Consistency",
        f"{stat['estimate']:.4f}",
        f"[{stat['ci_low']:.4f}, {stat['ci_high']:.4f}]",
        f"{100 * stat['confidence']:.4g} %",
        "fail",
    ]
    check = report["gate"]["checks"][0]
    assert check["message"] in res.stderr and check["message"].startswith(
        f"FAIL consistency {stat['estimate']:.4f} (99 % confidence sequence {stat['ci_low']:.4f}-{stat['ci_high']:.4f}, "
        f"{stat['draws']} draws) < 0.995 (--min-consistency 0.995)"
    )
    import xml.etree.ElementTree as ET

    failure = ET.parse(root / "seq.xml").getroot().find("./testsuite/testcase/failure")
    assert failure is not None and failure.get("message") == check["message"]
    from shiftaudit.result import AuditResult

    assert sequential_rows(AuditResult.from_json(report))[0][1:4] == tuple(cells[1:4])
    res = cli("compare", root / "seq.json", root / "seq.json")
    assert res.exit_code == 2 and "sequential gate report" in res.stderr and "--exact" in res.stderr


@pytest.mark.slow
def test_cli_exact_and_out_run_the_full_audit(model_and_data, tmp_path):
    root, full = model_and_data
    for extra in (["--exact"], ["--out", str(tmp_path / "rep")]):
        res = _eval(root, "--min-consistency", "0.01", "--json", str(tmp_path / "r.json"), *extra)
        assert res.exit_code == 0, res.output
        report = json.loads((tmp_path / "r.json").read_text())
        assert report["settings"]["engine"] != "sequential"
        assert report["metrics"]["consistency"]["exact"] == full.metrics["consistency"]["exact"]


def test_cli_refuses_a_bad_decision_error_and_shows_the_sequential_plan(model_and_data):
    root, _ = model_and_data
    res = _eval(root, "--min-consistency", "0.5", "--decision-error", "0")
    assert res.exit_code == 2 and "--decision-error" in res.stderr
    res = _eval(root, "--min-consistency", "0.5", "--dry-run")
    assert res.exit_code == 0 and "sequential: random draws" in res.stdout


def test_cli_all_unreadable_images_end_in_one_sentence_not_a_loop(model_and_data, tmp_path):
    root, _ = model_and_data
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(40):
        (bad / f"img{i:02d}.png").write_bytes(b"not a png at all")
    res = _eval(root, "--min-consistency", "0.5", data=("--data", str(bad), "--size", "16", "--resize", "16"))
    assert res.exit_code == 2 and "None of the 40 images could be read" in res.stderr, res.output


def test_a_sequential_result_has_no_report_folder(zero_padded, tmp_path):
    from shiftaudit.report.outputs import write_report_dir

    model, x, y, shifts, full = zero_padded
    r = _gate(model, x, y, shifts, build_thresholds(0.5))
    assert r.settings["engine"] == "sequential"
    with pytest.raises(UsageError, match="nothing to draw; audit with exact=True"):
        write_report_dir(r, tmp_path / "rep")
    assert not (tmp_path / "rep").exists()
