"""MAC and one-pixel flip rate, checked against a naive computation on a real model's outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shiftaudit.metrics.stability import neighbour_pairs
from shiftaudit.passes import DrawPlan
from shiftaudit.shifts import ShiftSet

from .helpers import tiny_cnn


def test_neighbour_pairs_of_a_window_and_of_all_shifts():
    window = ShiftSet.window((16, 16), 1)  # 3x3 window: 6 vertical + 6 horizontal neighbour pairs
    assert neighbour_pairs(window).shape == (12, 2)
    everything = ShiftSet.window((4, 4), 2)  # all 16 shifts of a 4x4 torus: 16 down + 16 right pairs
    assert neighbour_pairs(everything).shape == (32, 2)


def test_flip_rate_and_mac_match_a_naive_loop():
    from shiftaudit.engine import audit

    torch.manual_seed(0)
    model = tiny_cnn(spatial_head=True, size=8).eval()
    images = torch.randn(5, 3, 8, 8)
    result = audit(model, (images, torch.zeros(5, dtype=torch.long)), max_shift=4, device="cpu")
    assert "flip_rate" in result.metrics and "mac" in result.metrics
    # naive: every shift of the 8x8 torus, then count prediction changes between 1-px neighbours
    with torch.no_grad():
        preds = torch.stack([model(torch.roll(images, (a, b), (-2, -1))).argmax(1) for a in range(8) for b in range(8)], 1).view(5, 8, 8)
    down = (preds != torch.roll(preds, -1, 1)).float().mean(dim=(1, 2))
    right = (preds != torch.roll(preds, -1, 2)).float().mean(dim=(1, 2))
    naive = ((down + right) / 2).numpy()
    assert np.isclose(result.metrics["flip_rate"]["mean"], naive.mean())
    # MAC over the seeded random pairs of the consistency protocol (a pure function of seed and image id)
    shifts = ShiftSet.window((8, 8), 4)
    with torch.no_grad():
        p_top = torch.stack([torch.softmax(model(torch.roll(images, (int(a), int(b)), (-2, -1))), 1).amax(1)
                             for a, b in zip(shifts.dh, shifts.dw)], 1).double().numpy()
    pairs = DrawPlan(seed=0, pairs=5, num_shifts=len(shifts)).pair_shifts(np.arange(5))
    rows = np.arange(5)[:, None]
    mac = np.abs(p_top[rows, pairs[..., 0]] - p_top[rows, pairs[..., 1]]).mean(axis=1)
    assert result.metrics["mac"]["mean"] == pytest.approx(mac.mean(), rel=1e-5)
    assert result.metrics["mac"]["n"] == 5
