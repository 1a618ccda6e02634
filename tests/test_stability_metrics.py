"""MAC and one-pixel flip rate, checked against a naive computation on a real model's outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shiftaudit.engine.passes import DrawPlan
from shiftaudit.metrics.stability import neighbour_pairs
from shiftaudit.shifts.sets import ShiftSet

from .helpers import tiny_cnn


def test_neighbour_pairs_of_a_window_and_of_all_shifts():
    window = ShiftSet.window((16, 16), 1)  # 3x3 window: 6 vertical + 6 horizontal neighbour pairs
    assert neighbour_pairs(window).shape == (12, 2)
    everything = ShiftSet.window((4, 4), 2)  # all 16 shifts of a 4x4 torus: 16 down + 16 right pairs
    assert neighbour_pairs(everything).shape == (32, 2)


def test_flip_rate_and_mac_match_a_naive_loop():
    from shiftaudit.engine.runner import audit

    torch.manual_seed(0)
    model = tiny_cnn(spatial_head=True, size=8).eval()
    images = torch.randn(5, 3, 8, 8)
    result = audit(model, (images, torch.zeros(5, dtype=torch.long)), max_shift=4, device="cpu")
    assert "flip_rate" in result.metrics and "mac" in result.metrics
    # naive: every shift of the 8x8 torus, then count prediction changes between 1-px neighbours
    with torch.no_grad():
        preds = torch.stack([model(torch.roll(images, (a, b), (-2, -1))).argmax(1) for a in range(8) for b in range(8)], 1).view(
            5, 8, 8
        )
    down = (preds != torch.roll(preds, -1, 1)).float().mean(dim=(1, 2))
    right = (preds != torch.roll(preds, -1, 2)).float().mean(dim=(1, 2))
    naive = ((down + right) / 2).numpy()
    assert np.isclose(result.metrics["flip_rate"]["mean"], naive.mean())
    # MAC over the seeded random pairs of the consistency protocol (a pure function of seed and image id)
    shifts = ShiftSet.window((8, 8), 4)
    with torch.no_grad():
        p_top = (
            torch.stack(
                [
                    torch.softmax(model(torch.roll(images, (int(a), int(b)), (-2, -1))), 1).amax(1)
                    for a, b in zip(shifts.dh, shifts.dw)
                ],
                1,
            )
            .double()
            .numpy()
        )
    pairs = DrawPlan(seed=0, pairs=5, num_shifts=len(shifts)).pair_shifts(np.arange(5))
    rows = np.arange(5)[:, None]
    mac = np.abs(p_top[rows, pairs[..., 0]] - p_top[rows, pairs[..., 1]]).mean(axis=1)
    assert result.metrics["mac"]["mean"] == pytest.approx(mac.mean(), rel=1e-5)
    assert result.metrics["mac"]["n"] == 5


def test_flip_rate_is_omitted_with_a_note_when_the_set_has_no_one_pixel_neighbours():
    """A grid of step 2 has no two shifts 1 px apart: no flip-rate row (never 'nan %'), a note saying how to get it."""
    from rich.console import Console

    from shiftaudit.engine.runner import audit
    from shiftaudit.report.terminal import audit_table

    torch.manual_seed(0)
    model = tiny_cnn(size=8).eval()
    images = torch.randn(4, 3, 8, 8)
    result = audit(model, (images, torch.zeros(4, dtype=torch.long)), max_shift=4, shift_step=2, device="cpu")
    assert "flip_rate" not in result.metrics
    assert any("flip rate" in n and "--shift-step 1" in n for n in result.notes)
    console = Console(width=100, record=True)
    console.print(audit_table(result))
    text = console.export_text()
    assert "nan" not in text.lower() and "Flip rate" not in text


def test_a_step_1_set_without_neighbours_gets_no_advice_to_pass_step_1():
    """Offsets 2 px apart, given as a set of step 1: the note says why the flip rate is missing, and does not advise
    the --shift-step 1 that the set already has."""
    from shiftaudit.metrics import MetricContext
    from shiftaudit.metrics.stability import FlipRate

    shifts = ShiftSet.from_offsets((8, 8), [(0, 0), (0, 2), (2, 0), (2, 2)])
    assert shifts.step == 1 and neighbour_pairs(shifts).size == 0
    ctx = MetricContext(shifts, labelled=True, exhaustive=True)
    assert FlipRate.default_for(ctx) is None
    assert ctx.notes == [
        "flip rate between 1-px neighbouring shifts not reported: no two shifts of the set are one "
        "pixel apart (step 1); evaluate shifts one pixel apart to measure it"
    ]


def test_intervals_of_quantities_that_cannot_be_negative_stay_at_or_above_zero():
    """Mostly-zero variation (a near-invariant model) gave '[-0.0000, ...]': the interval is clipped to [0, 1]."""
    from shiftaudit.metrics import Variation
    from shiftaudit.metrics.stability import FlipRate, MeanAbsoluteChange

    values = np.array([0.0] * 9 + [1e-3])
    for metric in (Variation(), MeanAbsoluteChange(), FlipRate(ShiftSet.window((8, 8), 1))):
        metric.load_state_dict({"ids": np.arange(10), "values": values})
        out = metric.compute()
        assert out["ci_low"] == 0.0 and out["ci_high"] > out["mean"] > 0.0, type(metric).__name__


def test_adversarial_interval_bounds_are_the_wilson_bounds_of_each_radius():
    from scipy import stats as sps

    from shiftaudit.metrics import AdversarialCurve, ShiftBatch
    from shiftaudit.shifts.sets import ShiftSet

    shifts = ShiftSet.window((8, 8), 2)
    s, n = len(shifts), 10
    preds = np.zeros((n, s), dtype=np.int64)
    for i in range(n):  # image i first fails at radius i % 4; images 3 and 7 never fail
        if i % 4 < 3:
            preds[i, shifts.radius == i % 4] = 1
    curve = AdversarialCurve(shifts)
    curve.update(
        ShiftBatch(
            image_ids=np.arange(n),
            labels=np.zeros(n, dtype=np.int64),
            preds=preds,
            p_label=None,
            p_top=np.ones((n, s), dtype=np.float32),
            shift_index=np.tile(np.arange(s), (n, 1)),
            zero_slot=np.zeros(n, dtype=np.int64),
            random_slot=np.zeros(n, dtype=np.int64),
            pair_slots=np.zeros((n, 1, 2), dtype=np.int64),
            exhaustive=True,
            num_shifts=s,
            num_classes=2,
        )
    )
    out = curve.compute()
    correct = [sum(1 for i in range(n) if not (i % 4 < 3 and i % 4 <= r)) for r in out["radius"]]
    assert out["accuracy"] == [k / n for k in correct] == [0.7, 0.4, 0.2]
    for k, lo, hi in zip(correct, out["ci_low"], out["ci_high"]):
        ci = sps.binomtest(k, n).proportion_ci(0.95, method="wilson")
        assert (lo, hi) == pytest.approx((ci.low, ci.high), rel=1e-12, abs=1e-15)
