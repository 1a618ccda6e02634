"""The sequential gate: an anytime-valid betting confidence sequence, and gate verdicts equal to the full audit's from
fewer forward passes."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from shiftaudit.engine.betting import TRUNCATION, BettingSequence, bet_sizes, bounds
from shiftaudit.engine.runner import audit
from shiftaudit.errors import UsageError
from shiftaudit.gating import build_thresholds
from shiftaudit.metrics import AccuracyAtZeroShift, AdversarialCurve
from shiftaudit.report.sequential import sequential_rows
from shiftaudit.result import AuditResult
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


def test_an_accuracy_threshold_at_its_exact_value_is_decided_exactly_once_every_image_is_known(zero_padded):
    """Only the zero shift is drawn for accuracy: once every image's zero-shift prediction is cached (200 forward
    passes), the value is the full audit's, and a value at its threshold passes, as in the full audit."""
    model, x, y, shifts, full = zero_padded
    value = full.metrics["accuracy"]["none"]["value"]
    r = _gate(model, x, y, shifts, build_thresholds(None, value))
    assert r.settings["engine"] == "sequential" and r.gate["passed"]
    seq = r.metrics["sequential"]
    assert (seq["forward_rows"], seq["images_seen"]) == (200, 200)
    (stat,) = seq["statistics"]
    assert (stat["estimate"], stat["ci_low"], stat["ci_high"], stat["confidence"]) == (value, value, value, 1.0)
    assert stat["exact"] is True and stat["decision"] == "pass"
    check = r.gate["checks"][0]
    assert check["exact"] is True and check["estimator"] == "exact value of accuracy"
    assert check["message"] == (
        f"ok   accuracy 0.6650 (exact: every image's value known, {stat['draws']} draws) >= 0.665 (--min-accuracy 0.665)"
    )


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


# -- exact decisions, the fallback's reuse, the budget, any shift order ---------------------------------------------


class RowByRow(nn.Module):
    """The model, recording each input row's bytes (a row run twice shows as a repeat in ``rows``). ``one_by_one``:
    one row at a time, so that no row's output depends on the batch it came in (a CPU kernel picked for a batch of
    one gives other last bits than the batched one: the same caveat as ``pack_rows``)."""

    def __init__(self, model: nn.Module, one_by_one: bool = True) -> None:
        super().__init__()
        self.model = model
        self.one_by_one = one_by_one
        self.rows: list[bytes] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += [hashlib.sha1(r.cpu().numpy().tobytes()).digest() for r in x]
        return torch.cat([self.model(r[None]) for r in x]) if self.one_by_one else self.model(x)


class Recorder:
    """A progress that can say what it counts, as the CLI's does: records each start with what it counted then, and
    how many forward passes the model had run."""

    def __init__(self, model: RowByRow) -> None:
        self.model = model
        self.unit = "images"
        self.starts: list[tuple[str, int, str, int]] = []

    def start(self, total: int, description: str) -> None:
        self.starts.append((self.unit, total, description, len(self.model.rows)))

    def advance(self, n: int) -> None: ...

    def stop(self) -> None: ...


GATE_NOTES = ("sequential gate ", "the full audit reused ")


def _without_the_gate(report: AuditResult) -> str:
    """The report's JSON, less what describes the sequential gate (its notes)."""
    out = report.to_json()
    out["notes"] = [n for n in out["notes"] if not n.startswith(GATE_NOTES)]
    return json.dumps(out)


@pytest.mark.parametrize("engine", ["dense", "early-exit"])
def test_the_fallback_runs_no_pair_twice_and_writes_the_full_audits_report(zero_padded, engine):
    """Undecided within its budget, the gate hands its cache to the full audit, which runs only the pairs the gate did
    not: every (image, shift) input goes through the model once in all, and the report is the plain full audit's,
    byte for byte but for the gate's notes, with the forward rows it used (run or reused) counted alike."""
    model, x, y, _, _ = zero_padded
    x, y, shifts = x[:64], y[:64], ShiftSet.window((16, 16), 2)  # 64 x 25 = 1,600 pairs, one forward each
    wrapped = RowByRow(model)
    metrics = (lambda: {"metrics": [AccuracyAtZeroShift(), AdversarialCurve(shifts)]}) if engine == "early-exit" else dict
    plain = audit(wrapped, (x, y), shifts=shifts, device="cpu", **metrics())
    if engine == "early-exit":  # only metrics the early exit serves: it walks each image to its first mistake
        thresholds = build_thresholds(None, None, None, [f"2={plain.adversarial_accuracy(2)}"])
    else:
        thresholds = build_thresholds(plain.metrics["consistency"]["exact"]["value"])
    wrapped.rows = []
    plain = audit(wrapped, (x, y), shifts=shifts, device="cpu", thresholds=thresholds, **metrics())
    plain_rows = len(wrapped.rows)
    assert plain.settings["engine"] == engine and plain_rows == plain.timing["forward_rows"]
    wrapped.rows, progress = [], Recorder(wrapped)
    r = audit(
        wrapped,
        (x, y),
        shifts=shifts,
        device="cpu",
        thresholds=thresholds,
        sequential=True,
        sequential_budget=0.1,
        progress=progress,
        **metrics(),
    )
    assert r.settings["engine"] == engine and r.gate["passed"]
    (gate_note,) = [n for n in r.notes if n.startswith("sequential gate undecided after ")]
    spent = int(gate_note.split("after ")[1].split(" forward")[0].replace(",", ""))
    assert 0 < spent == progress.starts[1][3] <= 160  # what the gate had run when the full audit started: its budget
    assert len(set(wrapped.rows)) == len(wrapped.rows)  # no input twice: not one cached prediction was recomputed
    ran = len(wrapped.rows) - spent
    reused = f"the full audit reused {spent:,} of the sequential gate's {spent:,} predictions and ran {ran:,} "
    assert reused in " ".join(r.notes) or engine == "early-exit"
    if engine == "dense":
        assert len(wrapped.rows) == 1600 and ran == 1600 - spent  # the full audit's own passes, less the cached
    else:  # the walk reads what the gate walked, in chunks of its own: it may need some of the gate's, not all
        assert spent < len(wrapped.rows) <= plain_rows + spent
    assert r.timing["forward_rows"] == plain.timing["forward_rows"]
    assert _without_the_gate(r) == _without_the_gate(plain)


def test_the_budget_holds_within_a_round_and_the_fallback_counts_images(zero_padded):
    """A variation draw runs all 81 shifts of its image: the first round alone (32 images, 2,592 passes) is over a
    budget of 0.1 (1,620 of 16,200). The gate stops at the budget, mid-round; the full audit's progress counts
    images, not forward passes."""
    model, x, y, shifts, full = zero_padded
    wrapped = RowByRow(model, one_by_one=False)
    progress = Recorder(wrapped)
    for budget in (0.1, 0.37):
        wrapped.rows, progress.starts = [], []
        mean = full.metrics["variation"]["mean"] + 1e-6  # within noise: undecided
        r = _gate(wrapped, x, y, shifts, build_thresholds(None, None, mean), sequential_budget=budget, progress=progress)
        assert r.settings["engine"] == "dense" and r.gate["passed"]
        (gate, fallback) = progress.starts
        assert gate[:3] == ("forward passes", int(budget * 16_200), "sequential gate")
        assert fallback[:3] == ("images", 200, "auditing 200 images x 81 shifts")
        assert fallback[3] <= budget * 16_200  # the forward passes the gate had run when the full audit started
        assert len(wrapped.rows) == 16_200


def _shuffled(shifts: ShiftSet, seed: int) -> ShiftSet:
    order = np.random.default_rng(seed).permutation(len(shifts))
    return ShiftSet(shifts.height, shifts.width, shifts.dh[order], shifts.dw[order], shifts.kind, shifts.max_shift, shifts.step)


def test_any_shift_order_gives_the_radius_ordered_verdicts_and_values(zero_padded):
    """A set built directly may list its shifts in any order: the gate draws and walks them in radius order, so a
    shuffled set gives the same report as the ordered one; the full audit's gated values, its early exit included,
    are the same too."""
    model, x, y, shifts, full = zero_padded
    shuffled = _shuffled(shifts, 7)
    assert shuffled.zero_index != 0 and (shuffled.dh[shuffled.zero_index], shuffled.dw[shuffled.zero_index]) == (0, 0)
    assert not np.all(np.diff(shuffled.radius) >= 0)
    thresholds = build_thresholds(0.9, 0.6, None, ["1=0.6", "3=0.4"])
    a, b = (_gate(model, x, y, s, thresholds, seed=3).to_json() for s in (shifts, shuffled))
    assert b["settings"]["engine"] == "sequential"
    assert json.dumps(a) == json.dumps(b)
    for s in (shifts, shuffled):  # every image walked for the adversary: its statistic is exact, the full audit's
        r = _gate(model, x, y, s, build_thresholds(None, None, None, ["2=0.545"]), sequential_budget=1.0)
        (stat,) = r.metrics["sequential"]["statistics"]
        assert stat["exact"] and stat["estimate"] == full.adversarial_accuracy(2) == 0.545
    for engine in ({}, {"metrics": [AccuracyAtZeroShift(), AdversarialCurve(shuffled)], "early_exit": True}):
        r = audit(model, (x, y), shifts=shuffled, device="cpu", **engine)
        assert r.metrics["adversarial"] == full.metrics["adversarial"]
        assert r.metrics["accuracy"]["none"] == full.metrics["accuracy"]["none"]


def test_a_shift_set_without_the_zero_shift_is_refused(zero_padded):
    model, x, y, shifts, full = zero_padded
    zero = shifts.zero_index
    keep = np.arange(len(shifts)) != zero
    no_zero = ShiftSet(16, 16, shifts.dh[keep], shifts.dw[keep], "custom", 4, 1)
    with pytest.raises(UsageError, match=r"lacks the zero shift \(0, 0\)"):
        audit(model, (x, y), shifts=no_zero, device="cpu")


def test_the_exact_value_decides_though_the_sampled_estimate_is_on_the_wrong_side(zero_padded):
    """Seed 190 at decision error 0.5: by the round in which every image's zero-shift prediction is known, the draws
    put accuracy below 0.66 (the sampled confidence sequence alone said FAIL there), while the exact value, 0.665,
    is known. The verdict is the exact one."""
    model, x, y, shifts, full = zero_padded
    exact = full.metrics["accuracy"]["none"]["value"]
    r = _gate(model, x, y, shifts, build_thresholds(None, 0.66), seed=190, decision_error=0.5)
    assert r.settings["engine"] == "sequential" and r.gate["passed"]
    (stat,) = r.metrics["sequential"]["statistics"]
    assert stat["exact"] and (stat["estimate"], stat["decision"]) == (exact, "pass") and exact == 0.665
    drawn = uniform_integers(190, STREAM_SEQUENTIAL_IMAGE, np.arange(stat["draws"]), 1, 200)[:, 0]
    correct = np.asarray(full.per_image["correct"], dtype=float)
    assert len(set(drawn.tolist())) == 200 and correct[drawn].mean() < 0.66 < exact  # the draws' side: the wrong one


def test_known_values_bound_the_mean_for_certain():
    """K of D values known, summing to S: the mean is in [S / D, (S + D - K) / D] whatever the rest are; the
    interval is cut to it, and decides where it lies wholly on one side."""
    from shiftaudit.engine.sequential import GateStatistic

    stat = GateStatistic(build_thresholds(0.5)[0], BettingSequence(0.01), population=10)
    stat.sequence.extend(np.array([1.0, 0.0, 1.0]))
    assert stat.decision is None and stat.interval == (stat.sequence.low, stat.sequence.high)
    for img in range(6):
        stat.learn(img, 1.0)
    stat.learn(0, 0.0)  # learnt once: a value is known or not
    low, high = stat.known_range
    assert low == pytest.approx(0.6) and high == pytest.approx(1.0) and low < 0.6
    assert stat.interval[0] == low and stat.decision is True
    stat.threshold = build_thresholds(0.65)[0]
    assert stat.decision is None
    stat.exact = 0.65  # every value known: the full audit's value, and at the threshold it passes
    assert stat.decision is True and stat.to_json()["exact"] is True


def test_in_sampled_mode_the_budget_is_a_share_of_the_sampled_audit(zero_padded):
    """The planned full audit of a sampled run costs 2 + 2 x pairs passes per image (12 here, 2,400 in all), not every
    shift of the set (16,200): the budget and the saving are counted against that."""
    model, x, y, shifts, full = zero_padded
    r = _gate(model, x, y, shifts, build_thresholds(0.5), mode="sampled")
    seq = r.metrics["sequential"]
    assert r.settings["engine"] == "sequential" and seq["forward_rows_exhaustive"] == 2400 > seq["forward_rows"]
    wrapped = RowByRow(model, one_by_one=False)
    value = r.metrics["sequential"]["statistics"][0]["estimate"]
    r = _gate(wrapped, x, y, shifts, build_thresholds(round(value, 3)), mode="sampled", sequential_budget=0.1)
    assert r.settings["engine"] == "dense" and r.settings["mode"] == "sampled"
    (note,) = [n for n in r.notes if n.startswith("sequential gate undecided after ")]
    spent = int(note.split("after ")[1].split(" forward")[0].replace(",", ""))
    assert spent <= 240 and "(10 % of the full audit's)" in note
    assert r.timing["forward_rows"] == 2400  # the sampled audit's rows, each run or reused once
