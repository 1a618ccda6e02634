"""The engine against a naive per-shift loop written here, and against values computable by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from shiftaudit.engine.passes import DrawPlan
from shiftaudit.engine.runner import audit
from shiftaudit.errors import DataError, ModelError
from shiftaudit.shifts.sets import ShiftSet
from tests.helpers import tiny_cnn


def naive_all_shifts(model: nn.Module, x: torch.Tensor, y: torch.Tensor, shifts: ShiftSet):
    """One shift per pass, like the papers' own evaluation scripts: preds and P(label), (N, K)."""
    preds, plab = [], []
    with torch.no_grad():
        for dh, dw in zip(shifts.dh, shifts.dw):
            logits = model(torch.roll(x, (int(dh), int(dw)), (-2, -1)))
            p = torch.softmax(logits.double(), 1)
            preds.append(p.argmax(1))
            plab.append(p.gather(1, y[:, None])[:, 0])
    return torch.stack(preds, 1).numpy(), torch.stack(plab, 1).numpy()


def naive_top_probability(model: nn.Module, x: torch.Tensor, shifts: ShiftSet) -> np.ndarray:
    """Top-1 softmax probability at every shift, (N, K)."""
    with torch.no_grad():
        return torch.stack(
            [
                torch.softmax(model(torch.roll(x, (int(dh), int(dw)), (-2, -1))).double(), 1).amax(1)
                for dh, dw in zip(shifts.dh, shifts.dw)
            ],
            1,
        ).numpy()


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = tiny_cnn(num_classes=4, spatial_head=True).double().eval()
    x = torch.randn(12, 3, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)  # labels the model gets right at zero shift, so every metric has something to lose
    y[::3] = (y[::3] + 1) % 4  # and some it gets wrong
    return model, x, y


def test_every_all_shift_metric_equals_the_naive_loop(setup):
    model, x, y = setup
    shifts = ShiftSet.window((12, 12), 6)
    r = audit(model, (x, y), shifts=shifts, device="cpu", batch_size=50)
    preds, plab = naive_all_shifts(model, x, y, shifts)
    correct = preds == y.numpy()[:, None]
    m = r.metrics
    assert m["accuracy"]["none"]["value"] == correct[:, 0].mean()
    # exact consistency: sum_c p_c^2 per image
    exact = [sum((np.mean(row == c)) ** 2 for c in np.unique(row)) for row in preds]
    assert m["consistency"]["exact"]["value"] == pytest.approx(np.mean(exact), abs=1e-12)
    assert r.per_image["exact_consistency"] == pytest.approx(exact, abs=1e-12)
    # variation: std over shifts of P(correct)
    var = plab.std(axis=1)  # population std over the shifts (ddof 0): the spread of P(correct) over all shifts
    assert r.per_image["variation"] == pytest.approx(var.tolist(), rel=1e-6, abs=1e-9)  # float32 probabilities
    assert not np.allclose(var, plab.std(axis=1, ddof=1), rtol=1e-4)
    assert m["variation"]["mean"] == pytest.approx(var.mean(), rel=1e-6)
    # adversary: correct at every shift within radius r
    radius = shifts.radius
    curve = [float(np.mean([correct[i, radius <= rr].all() for i in range(len(y))])) for rr in shifts.radii]
    assert m["adversarial"]["accuracy"] == curve
    # accuracy map
    amap = m["accuracy_map"]
    for k in range(len(shifts)):
        i = amap["dh"].index(int(shifts.dh[k]))
        j = amap["dw"].index(int(shifts.dw[k]))
        assert amap["accuracy"][i][j] == correct[:, k].mean()
    diag = [(int(d), correct[:, k].mean()) for k, d in enumerate(shifts.dh) if shifts.dh[k] == shifts.dw[k]]
    assert sorted(diag) == list(zip(amap["diagonal"]["shift"], amap["diagonal"]["accuracy"]))
    # random-shift accuracy, sampled consistency and MAC: the per-image draws (a pure function of seed and image id)
    # read back from the naive table
    plan = DrawPlan(seed=0, pairs=5, num_shifts=len(shifts))
    ids = np.arange(len(y))
    rand, pairs = plan.random_shift(ids), plan.pair_shifts(ids)
    assert m["accuracy"]["random"]["value"] == correct[ids, rand].mean()
    agree = (preds[ids[:, None], pairs[..., 0]] == preds[ids[:, None], pairs[..., 1]]).mean(axis=1)
    assert r.per_image["sampled_agreement"] == pytest.approx(agree.tolist(), abs=1e-12)
    assert m["consistency"]["sampled"]["value"] == pytest.approx(agree.mean(), abs=1e-12)
    ptop = naive_top_probability(model, x, shifts)
    mac = np.abs(ptop[ids[:, None], pairs[..., 0]] - ptop[ids[:, None], pairs[..., 1]]).mean(axis=1)
    assert m["mac"]["mean"] == pytest.approx(mac.mean(), rel=1e-6)
    assert (
        abs(np.abs(ptop[ids[:, None], pairs[..., 0]] - ptop[ids[:, None], pairs[..., 1]]).max(axis=1).mean() - mac.mean()) > 1e-3
    )


def test_adversarial_curve_starts_at_accuracy_and_never_rises(setup):
    model, x, y = setup
    r = audit(model, (x, y), device="cpu")
    acc = r.metrics["adversarial"]["accuracy"]
    assert acc[0] == r.accuracy
    assert all(b <= a for a, b in zip(acc, acc[1:]))
    assert acc[-1] < acc[0]  # the zero-padded max-pooling net is not shift-invariant


def test_circular_conv_stack_without_downsampling_is_exactly_consistent():
    torch.manual_seed(1)
    model = tiny_cnn(num_classes=6, padding_mode="circular", pool=False).double().eval()
    x = torch.randn(8, 3, 10, 10, dtype=torch.float64)
    r = audit(model, (x, torch.zeros(8, dtype=torch.long)), device="cpu")
    assert r.metrics["consistency"]["exact"]["value"] == 1.0
    assert r.metrics["consistency"]["sampled"]["value"] == 1.0
    assert max(r.per_image["variation"]) < 1e-12


class ParityNet(nn.Module):
    """Predicts the parity of where the brightest pixel is: class 2 * (row % 2) + (col % 2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        img = x[:, 0]
        n, h, w = img.shape
        idx = img.reshape(n, -1).argmax(1)
        cls = 2 * ((idx // w) % 2) + (idx % w) % 2
        return nn.functional.one_hot(cls, 4).double() * 10.0


def impulse_images(n: int, size: int) -> torch.Tensor:
    x = torch.zeros(n, 1, size, size, dtype=torch.float64)
    x[:, 0, 0, 0] = 1.0
    return x


def test_parity_model_consistency_by_hand():
    x = impulse_images(4, 8)
    # all 64 shifts: each parity class equally likely -> sum of four (1/4)^2 = 1/4
    r = audit(ParityNet(), x, device="cpu", max_shift=4)
    assert r.metrics["consistency"]["exact"]["value"] == pytest.approx(0.25, abs=1e-15)
    # window [-1, 1]^2: even offset 1/3, odd 2/3 per axis -> (1/9 + 4/9)^2 = 25/81
    r = audit(ParityNet(), x, device="cpu", max_shift=1)
    assert r.metrics["consistency"]["exact"]["value"] == pytest.approx(25 / 81, abs=1e-15)


def test_sampled_consistency_estimates_the_exact_value():
    x = impulse_images(400, 8)
    r = audit(ParityNet(), x, device="cpu", max_shift=4, pairs=8, seed=3)
    s = r.metrics["consistency"]["sampled"]
    assert s["ci_low"] <= 0.25 <= s["ci_high"]
    assert abs(s["value"] - 0.25) < 0.03


def test_random_draws_are_per_image_not_per_batch():
    x = impulse_images(64, 8)
    y = torch.zeros(64, dtype=torch.long)
    r = audit(ParityNet(), (x, y), device="cpu", max_shift=4, batch_size=4096)
    correct = np.array(r.per_image["correct"])
    assert correct.all()  # zero shift: impulse at (0, 0), class 0
    acc_random = r.metrics["accuracy"]["random"]["value"]
    assert 0.1 < acc_random < 0.45  # about 1/4 of random shifts keep even parity on both axes; one shared draw gives 0 or 1


def test_same_seed_same_json_whatever_the_batch_size(setup):
    model, x, y = setup
    a = audit(model, (x, y), device="cpu", batch_size=64, seed=7).to_json()
    b = audit(model, (x, y), device="cpu", batch_size=1000, seed=7).to_json()
    c = audit(model, (x, y), device="cpu", batch_size=64, seed=8).to_json()
    a["settings"].pop("device_batch"), b["settings"].pop("device_batch"), c["settings"].pop("device_batch")
    assert json.dumps(a) == json.dumps(b)
    assert (
        a["metrics"]["consistency"]["sampled"] != c["metrics"]["consistency"]["sampled"]
        or a["per_image"]["sampled_agreement"] != c["per_image"]["sampled_agreement"]
    )


def test_sampled_mode_gives_the_same_random_metrics_as_exhaustive(setup):
    model, x, y = setup
    ex = audit(model, (x, y), device="cpu", mode="exhaustive", seed=5)
    sa = audit(model, (x, y), device="cpu", mode="sampled", seed=5)
    assert sa.metrics["consistency"]["sampled"] == ex.metrics["consistency"]["sampled"]
    assert sa.metrics["accuracy"] == ex.metrics["accuracy"]
    assert "exact" not in sa.metrics["consistency"] and "variation" not in sa.metrics
    assert sa.settings["mode"] == "sampled"


def test_unlabelled_data_reports_consistency_only(setup):
    model, x, _ = setup
    r = audit(model, x, device="cpu")
    # the label-free metrics only; flip examples take the zero-shift prediction as the reference (issue 14)
    assert set(r.metrics) == {"consistency", "flip_rate", "mac", "flip_examples"}
    assert r.metrics["flip_examples"]["reference"] == "zero-shift prediction"
    assert any("unlabelled" in n for n in r.notes)


class NaNForOddImages(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.stack([x.mean((1, 2, 3)), -x.mean((1, 2, 3))], 1)
        bad = x[:, 0, 0, 0] > 0
        return torch.where(bad[:, None], torch.full_like(out, float("nan")), out)


def test_nonfinite_outputs_are_counted_and_left_out():
    x = -torch.rand(6, 1, 4, 4, dtype=torch.float64) - 0.1
    x[1, 0, 2, 2] = 5.0  # image 1 gives NaN at the shifts that bring this pixel to (0, 0)
    r = audit(NaNForOddImages(), (x, torch.zeros(6, dtype=torch.long)), device="cpu")
    assert r.data["nonfinite_images"] == 1
    assert r.metrics["accuracy"]["none"]["n"] == 5
    assert any("NaN" in n for n in r.notes)


class WrongShape(nn.Module):
    def forward(self, x):
        return x.mean(1)


def test_model_with_wrong_output_shape_is_a_clear_error():
    with pytest.raises(ModelError, match="output has shape"):
        audit(WrongShape(), torch.randn(2, 3, 8, 8), device="cpu")


def test_labels_outside_the_model_classes_are_a_clear_error(setup):
    model, x, y = setup
    with pytest.raises(DataError, match="model has 4 classes"):
        audit(model, (x, y + 10), device="cpu")


class AlwaysClassTwo(nn.Module):
    """Confident and constant: P(class 2) ~ 1 for every input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], 4, dtype=x.dtype)
        out[:, 2] = 20.0
        return out + 0 * x.mean((1, 2, 3))[:, None]


def test_confident_model_at_zero_accuracy_gets_a_label_mismatch_note_and_no_new_json_key():
    x = torch.randn(6, 3, 4, 4)
    wrong = audit(AlwaysClassTwo(), (x, torch.zeros(6, dtype=torch.long)), device="cpu", max_shift=1)
    assert wrong.accuracy == 0.0
    assert any(n.startswith("labels likely do not match the model's classes") and "100 %" in n for n in wrong.notes)
    assert "confidence" not in wrong.to_json()["metrics"]  # read by the engine, never reported
    right = audit(AlwaysClassTwo(), (x, torch.full((6,), 2, dtype=torch.long)), device="cpu", max_shift=1)
    assert right.accuracy == 1.0 and not any("labels likely" in n for n in right.notes)
