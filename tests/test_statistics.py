"""The confidence intervals against an independent library (scipy), and their coverage checked by simulation.

Users gate releases on these intervals, so they are compared to scipy to the last few ulps on many (k, n), including
k = 0, k = n and n = 1, and the coverage the docs claim (95 %) is measured on models whose true value is known.
The tests named ``test_planted_*`` each catch one bug that once went unnoticed (see docs/testing.md).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from shiftaudit.metrics import SampledConsistency
from shiftaudit.metrics.base import ShiftBatch
from shiftaudit.metrics.stability import MeanAbsoluteChange
from shiftaudit.metrics.stats import Z95, mean_interval, proportion, summary, wilson_interval
from tests.helpers import examples

COUNTS = [(0, 1), (1, 1), (0, 2), (1, 2), (2, 2), (0, 10), (3, 10), (10, 10), (1, 37), (36, 37), (500, 1000), (999, 1000)]


def scipy_wilson(k: int, n: int) -> tuple[float, float]:
    ci = sps.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return ci.low, ci.high


def scipy_mean_ci(values: np.ndarray) -> tuple[float, float]:
    return sps.norm.interval(0.95, loc=values.mean(), scale=sps.sem(values))


def test_z95_is_the_normal_quantile():
    assert Z95 == pytest.approx(sps.norm.ppf(0.975), abs=1e-15)


@pytest.mark.parametrize(("k", "n"), COUNTS)
def test_wilson_matches_scipy_at_the_edges(k, n):
    assert wilson_interval(k / n, n) == pytest.approx(scipy_wilson(k, n), abs=1e-12)


@settings(max_examples=examples(200), deadline=None)
@given(st.integers(1, 5000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_matches_scipy_on_any_count(kn):
    k, n = kn
    assert wilson_interval(k / n, n) == pytest.approx(scipy_wilson(k, n), abs=1e-12)


def test_wilson_without_data_is_nan():
    assert all(math.isnan(v) for v in wilson_interval(0.5, 0)) and all(math.isnan(v) for v in wilson_interval(float("nan"), 5))


@settings(max_examples=examples(100), deadline=None)
@given(st.lists(st.floats(0, 1, allow_nan=False), min_size=2, max_size=60))
def test_mean_interval_matches_scipy_normal_interval(values):
    v = np.asarray(values)
    lo, hi = mean_interval(v)
    if v.std(ddof=1) == 0:
        assert lo == hi == pytest.approx(v.mean())
    else:
        assert (lo, hi) == pytest.approx(scipy_mean_ci(v), rel=1e-12, abs=1e-15)


def test_mean_interval_of_one_value_is_that_value():
    assert mean_interval(np.array([0.25])) == (0.25, 0.25)
    assert all(math.isnan(v) for v in mean_interval(np.zeros(0)))


def test_proportion_and_summary_report_what_they_computed():
    v = np.array([1.0, 0.0, 1.0, 1.0, 0.5])
    lo, hi = wilson_interval(0.7, 5)
    assert proportion(v) == {"value": 0.7, "ci_low": lo, "ci_high": hi, "n": 5}
    s = summary(v)
    lo, hi = scipy_mean_ci(v)
    assert s["mean"] == 0.7 and s["median"] == 1.0 and s["n"] == 5
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((lo, hi), rel=1e-12)


# --- coverage: a 95 % interval contains the true value about 95 % of the time -----------------------------------


def _pair_batch(preds: np.ndarray, pairs: np.ndarray, p_top: np.ndarray | None = None) -> ShiftBatch:
    """A ShiftBatch of B images at S shift slots whose random pairs are the given (B, k, 2) slots."""
    b, s = preds.shape
    return ShiftBatch(
        image_ids=np.arange(b),
        labels=None,
        preds=preds,
        p_label=None,
        p_top=np.zeros((b, s), np.float32) if p_top is None else p_top,
        shift_index=np.tile(np.arange(s), (b, 1)),
        zero_slot=np.zeros(b, np.int64),
        random_slot=np.zeros(b, np.int64),
        pair_slots=pairs,
        exhaustive=True,
        num_shifts=s,
        num_classes=int(preds.max()) + 1,
    )


def test_sampled_consistency_interval_covers_the_exact_value_95_percent_of_the_time():
    """A known "model": image i predicts class 0 at a share q_i of its shifts, class 1 elsewhere. The exact consistency
    is mean(q^2 + (1-q)^2); the sampled estimator (one pair per image, the paper's protocol) with its Wilson interval
    must contain it in about 95 % of repeated draws (at least 93 % over 2000 repeats; the interval is conservative
    when images differ, so it may cover more)."""
    rng = np.random.default_rng(1)
    n, shifts, repeats = 60, 64, 2000
    q = rng.choice([1.0, 0.95, 0.75, 0.5], size=n)
    preds = (np.arange(shifts)[None, :] >= np.round(q * shifts)[:, None]).astype(np.int64)
    share = (preds == 0).mean(axis=1)
    exact = float(np.mean(share**2 + (1 - share) ** 2))
    covered = 0
    for _ in range(repeats):
        m = SampledConsistency()
        m.update(_pair_batch(preds, rng.integers(0, shifts, size=(n, 1, 2))))
        out = m.compute()
        covered += out["ci_low"] <= exact <= out["ci_high"]
    assert 0.93 <= covered / repeats <= 0.995


def test_mean_interval_covers_the_true_mean_95_percent_of_the_time():
    """Per-image values drawn from a known skewed distribution (Beta(0.5, 4), mean 1/9): 95 % coverage within
    sampling error at n = 200 images."""
    rng = np.random.default_rng(2)
    covered = sum(lo <= 1 / 9 <= hi for lo, hi in (mean_interval(rng.beta(0.5, 4, size=200)) for _ in range(2000)))
    assert 0.93 <= covered / 2000 <= 0.97


# --- the planted bugs: each one, put back, fails the test named for it ------------------------------------------


def test_planted_z95_wrong_constant():
    """Z95 = 1.0 gives 68 % intervals: scipy's 95 % Wilson interval differs."""
    assert wilson_interval(0.8, 50) == pytest.approx(scipy_wilson(40, 50), abs=1e-12)
    assert mean_interval(np.array([0.1, 0.4, 0.2, 0.9])) == pytest.approx(
        scipy_mean_ci(np.array([0.1, 0.4, 0.2, 0.9])), rel=1e-12
    )


def test_planted_wilson_centre_replaced_by_p():
    """The Wilson centre is (p + z^2/2n) / (1 + z^2/n), not p: at p = 0 the interval is [0, 0.2775...] for n = 10."""
    lo, hi = wilson_interval(0.0, 10)
    assert (
        lo == 0.0
        and hi == pytest.approx(scipy_wilson(0, 10)[1], abs=1e-12)
        and hi == pytest.approx(0.27753279986288707, abs=1e-12)
    )
    assert (lo + hi) / 2 != 0.0


def test_planted_mean_interval_not_divided_by_sqrt_n():
    """The half-width is z * sd / sqrt(n): for 100 values with sd 1 it is 0.196, not 1.96."""
    v = np.tile([0.0, 2.0], 50)  # mean 1, sample sd 1.005
    lo, hi = mean_interval(v)
    assert (hi - lo) / 2 == pytest.approx(Z95 * v.std(ddof=1) / 10, rel=1e-12)


def test_planted_mac_max_instead_of_mean():
    """MAC averages |p_top(a) - p_top(b)| over an image's pairs; with changes 0.1 and 0.5 it is 0.3 (max: 0.5)."""
    p_top = np.array([[0.9, 0.8, 0.9, 0.4]], dtype=np.float32)
    pairs = np.array([[[0, 1], [2, 3]]])
    m = MeanAbsoluteChange()
    m.update(_pair_batch(np.zeros((1, 4), np.int64), pairs, p_top))
    assert m.compute()["mean"] == pytest.approx((abs(0.9 - 0.8) + abs(0.9 - 0.4)) / 2, abs=1e-7)


# -- mutation-testing survivors (docs/testing.md) ---------------------------------------------------------------------
def test_summary_clips_to_bounds_only_where_the_interval_leaves_them():
    from shiftaudit.metrics.stats import mean_interval, summary

    values = np.array([0.1, 0.2, 0.3, 0.25])
    lo, hi = mean_interval(values)
    assert 0 < lo < hi < 1
    assert summary(values, bounds=(0.0, 1.0)) == {
        "mean": pytest.approx(0.2125),
        "median": pytest.approx(0.225),
        "ci_low": lo,
        "ci_high": hi,
        "n": 4,
    }
    tight = summary(values, bounds=(0.15, 0.22))
    assert (tight["ci_low"], tight["ci_high"]) == (max(lo, 0.15), min(hi, 0.22))


def test_summary_of_no_values_is_nan_not_an_error():
    from shiftaudit.metrics.stats import summary

    out = summary(np.zeros(0), bounds=(0.0, 1.0))
    assert math.isnan(out["mean"]) and math.isnan(out["median"]) and out["n"] == 0


def test_wilson_bounds_never_leave_0_1_even_where_rounding_would():
    from shiftaudit.metrics.stats import wilson_interval

    assert wilson_interval(1.0, 16)[1] == 1.0  # centre + half is 1.0000000000000002 here before the clamp
    assert all(0.0 <= wilson_interval(p, n)[0] <= wilson_interval(p, n)[1] <= 1.0 for n in range(1, 300) for p in (0.0, 1.0))


def test_proportion_of_no_values_is_nan_with_nan_bounds():
    from shiftaudit.metrics.stats import proportion

    out = proportion(np.zeros(0, dtype=bool))
    assert math.isnan(out["value"]) and math.isnan(out["ci_low"]) and math.isnan(out["ci_high"]) and out["n"] == 0
