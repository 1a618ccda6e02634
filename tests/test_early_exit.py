"""Adversary early exit: the same adversarial curve as the full run, from fewer forward passes."""

from __future__ import annotations

import numpy as np
import torch

from shiftaudit.engine.runner import audit
from shiftaudit.metrics import AccuracyAtZeroShift, AdversarialCurve, ExactConsistency
from shiftaudit.shifts.sets import ShiftSet
from tests.helpers import tiny_cnn


def _setup(n: int = 24):
    torch.manual_seed(0)
    model = tiny_cnn(num_classes=4, spatial_head=True).double().eval()
    x = torch.randn(n, 3, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::5] = (y[::5] + 1) % 4  # some images wrong at zero shift already
    return model, x, y


def test_early_exit_gives_the_full_runs_adversarial_curve():
    model, x, y = _setup()
    shifts = ShiftSet.window((12, 12), 6)
    full = audit(model, (x, y), shifts=shifts, device="cpu")
    for batch in (7, 64, 5000):
        fast = audit(
            model,
            (x, y),
            shifts=shifts,
            device="cpu",
            batch_size=batch,
            metrics=[AdversarialCurve(shifts), AccuracyAtZeroShift()],
        )
        assert fast.settings["engine"] == "early-exit"
        assert fast.metrics["adversarial"] == full.metrics["adversarial"]
        assert fast.metrics["accuracy"]["none"] == full.metrics["accuracy"]["none"]
        assert fast.per_image["first_failure_radius"] == full.per_image["first_failure_radius"]
        assert fast.timing["forward_rows"] < full.timing["forward_rows"]
        assert any("early exit" in n and "skipped" in n for n in fast.notes)


def test_no_early_exit_when_a_metric_needs_every_shift():
    model, x, y = _setup(6)
    shifts = ShiftSet.window((12, 12), 3)
    r = audit(model, (x, y), shifts=shifts, device="cpu", early_exit=True, metrics=[AdversarialCurve(shifts), ExactConsistency()])
    assert r.settings["engine"] == "dense"
    assert r.timing["forward_rows"] == 6 * len(shifts)
    assert any("consistency_exact need every shift" in n for n in r.notes)


def test_early_exit_can_be_turned_off():
    model, x, y = _setup(6)
    shifts = ShiftSet.window((12, 12), 3)
    r = audit(model, (x, y), shifts=shifts, device="cpu", early_exit=False, metrics=[AdversarialCurve(shifts)])
    assert r.settings["engine"] == "dense"
    assert np.isfinite(r.metrics["adversarial"]["accuracy"]).all()
