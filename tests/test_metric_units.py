"""Each accumulator on hand-made batches whose answers are worked out here, without a model or the engine.

Fast and exact: these are the tests mutation testing leans on (a metric's arithmetic changed by one operator fails
one of them in milliseconds).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shiftaudit.errors import UsageError
from shiftaudit.metrics import (
    AccuracyAtRandomShift,
    AccuracyAtZeroShift,
    AccuracyMap,
    ExactConsistency,
    FlipExamples,
    SampledConsistency,
    Variation,
)
from shiftaudit.metrics.adversarial import NEVER, AdversarialCurve, radius_json
from shiftaudit.metrics.base import ShiftBatch
from shiftaudit.metrics.layers import _dense_max_pool, _normalise, colour_scale, exact_modulo
from shiftaudit.metrics.layout import assemble
from shiftaudit.metrics.stability import FlipRate, MeanAbsoluteChange
from shiftaudit.metrics.stats import wilson_interval
from shiftaudit.shifts.sets import ShiftSet

SHIFTS = ShiftSet.window((8, 8), 1)  # 9 shifts, zero first, ordered by radius


def batch(preds, labels=None, p_label=None, p_top=None, ids=None, random_slot=None, pairs=None) -> ShiftBatch:
    preds = np.asarray(preds, dtype=np.int64)
    b, s = preds.shape
    return ShiftBatch(
        image_ids=np.arange(b) if ids is None else np.asarray(ids),
        labels=None if labels is None else np.asarray(labels),
        preds=preds,
        p_label=None if p_label is None else np.asarray(p_label, np.float32),
        p_top=np.zeros((b, s), np.float32) if p_top is None else np.asarray(p_top, np.float32),
        shift_index=np.tile(np.arange(s), (b, 1)),
        zero_slot=np.zeros(b, np.int64),
        random_slot=np.zeros(b, np.int64) if random_slot is None else np.asarray(random_slot),
        pair_slots=np.zeros((b, 1, 2), np.int64) if pairs is None else np.asarray(pairs),
        exhaustive=True,
        num_shifts=s,
        num_classes=int(preds.max()) + 1,
    )


def test_accuracy_reads_the_zero_and_the_random_slot():
    b = batch([[0, 1, 1], [2, 2, 0], [1, 0, 0]], labels=[0, 2, 0], random_slot=[1, 2, 2])
    zero, rand = AccuracyAtZeroShift(), AccuracyAtRandomShift()
    zero.update(b)
    rand.update(b)
    assert zero.compute() == {
        "value": 2 / 3,
        "ci_low": wilson_interval(2 / 3, 3)[0],
        "ci_high": wilson_interval(2 / 3, 3)[1],
        "n": 3,
    }
    assert rand.compute()["value"] == 1 / 3  # slots 1, 2, 2 -> preds 1, 0, 0 against labels 0, 2, 0


def test_exact_consistency_is_the_sum_of_squared_shares():
    m = ExactConsistency()
    m.update(batch([[0, 0, 0, 1], [0, 1, 2, 3], [5, 5, 5, 5]]))
    per_image = [0.75**2 + 0.25**2, 4 * 0.25**2, 1.0]
    assert m.sorted_values()[1].tolist() == per_image
    assert m.compute()["value"] == pytest.approx(np.mean(per_image), abs=1e-15)


def test_sampled_consistency_averages_agreement_over_pairs_then_images():
    pairs = [[[0, 1], [0, 2]], [[1, 2], [2, 2]]]
    m = SampledConsistency()
    m.update(batch([[0, 0, 1], [3, 4, 4]], pairs=pairs))
    assert m.sorted_values()[1].tolist() == [0.5, 1.0]
    assert m.compute()["value"] == 0.75


def test_variation_is_the_population_std_of_p_correct_over_shifts():
    p = [[0.9, 0.5, 0.1], [0.2, 0.2, 0.2]]
    m = Variation()
    m.update(batch([[0, 0, 0], [0, 0, 0]], labels=[0, 0], p_label=p))
    expect = [float(np.std(np.float32([0.9, 0.5, 0.1]).astype(np.float64))), 0.0]
    assert m.sorted_values()[1].tolist() == pytest.approx(expect, abs=1e-12)
    out = m.compute()
    assert out["mean"] == pytest.approx(np.mean(expect)) and out["median"] == pytest.approx(np.median(expect)) and out["n"] == 2


def test_mac_and_flip_rate_per_image():
    shifts = ShiftSet.window((8, 8), 1)
    fr = FlipRate(shifts)
    assert fr.pairs.shape == (12, 2)
    preds = np.zeros((2, 9), np.int64)
    preds[1, shifts.zero_index] = 1  # the zero shift differs from its 4 neighbours
    fr.update(batch(preds))
    assert fr.sorted_values()[1].tolist() == [0.0, 4 / 12]
    out = fr.compute()
    assert out["pairs_per_image"] == 12 and out["mean"] == pytest.approx(2 / 12)
    mac = MeanAbsoluteChange()
    mac.update(batch(np.zeros((1, 3)), p_top=[[0.5, 0.75, 1.0]], pairs=[[[0, 2], [1, 1]]]))
    assert mac.compute()["mean"] == pytest.approx(0.25)


def test_accuracy_map_cells_diagonal_and_extremes():
    shifts = ShiftSet.window((8, 8), 1)
    labels = np.array([0, 0])
    preds = np.zeros((2, 9), np.int64)
    k = next(i for i in range(9) if shifts.dh[i] == 1 and shifts.dw[i] == 1)
    preds[0, k] = 3  # wrong at (1, 1) for one image of two
    m = AccuracyMap(shifts)
    b = batch(preds, labels=labels)
    b.shift_index = np.tile(np.arange(9), (2, 1))
    m.update(b)
    out = m.compute()
    assert out["dh"] == [-1, 0, 1] and out["dw"] == [-1, 0, 1] and out["n"] == 2
    assert out["accuracy"][2][2] == 0.5 and sum(v for row in out["accuracy"] for v in row) == 8.5
    assert out["diagonal"] == {"shift": [-1, 0, 1], "accuracy": [1.0, 1.0, 0.5]}
    assert (out["min"], out["max"]) == (0.5, 1.0)
    other = AccuracyMap(shifts)
    other.update(b)
    m.merge(other)
    assert m.compute()["n"] == 4 and m.compute()["accuracy"][2][2] == 0.5


def test_per_image_metrics_merge_and_sort_by_image_id():
    a, b = ExactConsistency(), ExactConsistency()
    a.update(batch([[0, 1]], ids=[7]))
    b.update(batch([[2, 2], [0, 0]], ids=[3, 9]))
    a.merge(b)
    ids, values = a.sorted_values()
    assert ids.tolist() == [3, 7, 9] and values.tolist() == [1.0, 0.5, 1.0]
    with pytest.raises(TypeError, match="cannot merge SampledConsistency into ExactConsistency"):
        a.merge(SampledConsistency())
    fresh = ExactConsistency()
    fresh.load_state_dict(a.state_dict())
    assert fresh.sorted_values()[0].tolist() == [3, 7, 9]


def test_radius_json_never_and_fractions():
    assert radius_json(NEVER) is None and radius_json(np.int64(3)) == 3 and radius_json(float("inf")) is None
    assert radius_json(2.0) == 2 and isinstance(radius_json(2.0), int) and radius_json(0.5) == 0.5
    assert radius_json(float(NEVER)) is None  # the integer sentinel read back as a float is still "never"
    assert radius_json(0.1234567) == 0.123457  # six decimals


def test_flip_examples_keep_the_earliest_failures_with_p_correct_grids():
    shifts = ShiftSet.window((8, 8), 1)
    n = 3
    preds = np.zeros((n, 9), np.int64)
    p = np.full((n, 9), 0.9, np.float32)
    corner = next(i for i in range(9) if shifts.dh[i] == -1 and shifts.dw[i] == -1)
    preds[0, corner], p[0, corner] = 2, 0.1  # image 0: right at zero, wrong at (-1, -1)
    preds[2, shifts.zero_index] = 1  # image 2: wrong at zero shift: not a flip example
    m = FlipExamples(shifts, limit=4)
    m.update(batch(preds, labels=[0, 0, 0], p_label=p))
    out = m.compute()
    assert out["limit"] == 4 and [e["image_id"] for e in out["examples"]] == [0]
    ex = out["examples"][0]
    assert ex["first_failure_radius"] == 1 and ex["flip_shift"] == [-1, -1] and ex["flip_prediction"] == 2 and ex["label"] == 0
    assert ex["p_correct"][0][0] == 0.1 and ex["p_correct"][1][1] == 0.9


def test_layout_names_every_metric_and_per_image_column():
    shifts = ShiftSet.window((8, 8), 1)
    preds = np.zeros((2, 9), np.int64)
    b = batch(preds, labels=[0, 1], p_label=np.full((2, 9), 0.5))
    metrics = [
        AccuracyAtZeroShift(),
        AccuracyAtRandomShift(),
        SampledConsistency(),
        ExactConsistency(),
        Variation(),
        AccuracyMap(shifts),
    ]
    for m in metrics:
        m.update(b)
    out, per_image = assemble(metrics)
    assert list(out) == ["accuracy", "consistency", "variation", "accuracy_map"]
    assert list(out["accuracy"]) == ["none", "random"] and list(out["consistency"]) == ["sampled", "exact"]
    assert per_image == {
        "image_id": [0, 1],
        "correct": [True, False],
        "sampled_agreement": [1.0, 1.0],
        "exact_consistency": [1.0, 1.0],
        "variation": [0.0, 0.0],
    }


def test_zero_shift_confidence_merges_and_round_trips_its_state():
    from shiftaudit.metrics.accuracy import ZeroShiftConfidence

    a, b = ZeroShiftConfidence(), ZeroShiftConfidence()
    a.update(batch([[0, 0]], p_top=[[0.5, 0.1]]))
    b.update(batch([[0, 0], [1, 1]], p_top=[[0.75, 0.2], [1.0, 0.3]]))
    a.merge(b)
    assert a.compute() == {"mean_top1": 0.75, "n": 3}
    fresh = ZeroShiftConfidence()
    fresh.load_state_dict(a.state_dict())
    assert fresh.compute() == {"mean_top1": 0.75, "n": 3}
    assert ZeroShiftConfidence().compute()["n"] == 0


def test_a_plug_in_metric_without_readings_is_read_as_a_plain_number_named_after_it():
    from shiftaudit.metrics.base import Reading, value_readings

    assert value_readings("edge_flip_share", {"value": 0.125, "ci_low": 0.0625, "ci_high": 0.25}) == [
        Reading("edge flip share", 0.125, 0.0625, 0.25, percent=False, digits=4, ci_digits=4)
    ]
    assert value_readings("x", {"value": 0.5}) == [Reading("x", 0.5, None, None, percent=False, digits=4, ci_digits=4)]
    assert value_readings("x", {"mean": 0.5}) == []  # no "value": nothing to read


def test_colour_scale_is_half_the_reference_and_none_without_a_usable_reference():
    assert colour_scale(0.4) == 0.2 and colour_scale(1e-9) == 0.5e-9
    for unusable in (None, 0.0, -0.25, float("inf"), float("nan")):  # a single image, identical images, bad input
        assert colour_scale(unusable) is None, unusable


def _distances(shifts: ShiftSet, zero_where) -> np.ndarray:
    return np.array([0.0 if zero_where(int(h), int(w)) else 0.3 for h, w in zip(shifts.dh, shifts.dw)])


def test_exact_modulo_worked_examples():
    full = ShiftSet.all_shifts((8, 8))
    assert exact_modulo(np.zeros(len(full)), full, 0.5) == 1
    assert exact_modulo(_distances(full, lambda h, w: h % 2 == 0 and w % 2 == 0), full, 0.5) == 2
    assert exact_modulo(_distances(full, lambda h, w: h % 4 == 0 and w % 4 == 0), full, 0.5) == 4
    # zero only at the zero shift: no N > 1 has two shifts to compare, so none (not "modulo 8")
    assert exact_modulo(_distances(full, lambda h, w: h == 0 and w == 0), full, 0.5) is None
    # two shifts are enough
    pair = ShiftSet.from_offsets((8, 8), [(0, 0), (0, 2)])
    assert exact_modulo(np.zeros(2), pair, 0.5) == 1


def test_exact_modulo_tolerance_is_relative_to_a_usable_reference_and_inclusive():
    full = ShiftSet.all_shifts((8, 8))
    flat = np.full(len(full), 7e-5)
    flat[full.zero_index] = 0.0
    assert exact_modulo(flat, full, 0.5) is None  # 7e-5 > 1e-4 x 0.5
    assert exact_modulo(flat, full, 1.0) == 1  # 7e-5 <= 1e-4 x 1
    assert exact_modulo(flat * 1e3, full, 1e3) == 1  # 0.07 <= 1e-4 x 1000: the tolerance scales with the layer
    edge = flat / 7e-5 * 1e-4  # exactly at the limit: within
    assert exact_modulo(edge, full, 1.0) == 1
    # without a usable reference the tolerance is absolute, 1e-4
    for unusable in (0.0, -1.0, float("inf"), float("nan")):
        assert exact_modulo(flat, full, unusable) == 1, unusable
        assert exact_modulo(flat * 2, full, unusable) is None, unusable  # 1.4e-4 > 1e-4


def test_normalised_features_are_float32_whatever_the_layer_gives_and_only_maps_are_compared():
    for dtype in (torch.bfloat16, torch.float16, torch.int64):
        f = torch.ones(2, 3, 4, 4, dtype=dtype)
        out = _normalise(f)
        assert out.dtype == torch.float32 and out.shape == (2, 4, 4, 4), dtype
        assert torch.allclose(out[:, :3], torch.full((2, 3, 4, 4), 3**-0.5)) and not out[:, 3].any()
    assert _normalise(torch.zeros(2, 3))[:, 3].all()  # pooled (N, C): one location, a zero vector flagged
    message = r"^A measured layer produced a 3-D tensor; only \(N, C, H, W\) feature maps can be compared\.$"
    with pytest.raises(UsageError, match=message):
        _normalise(torch.ones(2, 3, 4))


def test_the_dense_part_of_a_non_square_max_pool_equals_a_naive_loop():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 6, 5)
    got = _dense_max_pool(torch.nn.MaxPool2d((3, 2), stride=2), x)
    want = torch.empty_like(x)
    for i in range(6):
        for j in range(5):
            window = [x[..., (i + a) % 6, (j + b) % 5] for a in range(3) for b in range(2)]
            want[..., i, j] = torch.stack(window).amax(0)
    assert torch.equal(got, want)
    square = _dense_max_pool(torch.nn.MaxPool2d(2, stride=2), x)
    assert square.shape == x.shape


def test_a_map_and_a_curve_of_no_images_are_unmeasured_not_an_error():
    """A resumed or distributed rank can end with no images: every cell is nan (shown as "-") and the count 0."""
    import warnings

    shifts = ShiftSet.window((8, 8), 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's all-nan min/max
        acc_map = AccuracyMap(shifts).compute()
        curve = AdversarialCurve(shifts).compute()
    assert acc_map["n"] == 0 and np.isnan(acc_map["accuracy"]).all() and np.isnan([acc_map["min"], acc_map["max"]]).all()
    assert np.isnan(AccuracyMap(shifts).per_shift()).all() and AccuracyMap(shifts).per_shift().shape == (len(shifts),)
    assert curve["radius"] == [0, 1] and curve["n"] == 0 and np.isnan(curve["accuracy"]).all()
    assert set(curve) == {"radius", "accuracy", "ci_low", "ci_high", "n"}
