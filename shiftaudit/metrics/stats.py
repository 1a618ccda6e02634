"""Confidence intervals.

Images are the independent unit of every estimate here, so intervals are taken over images. Proportions use the
Wilson score interval, which stays inside [0, 1] and does not collapse to zero width when every image agrees
(the usual case for a robust model, where a normal-approximation interval would claim false certainty). For
per-image averages in [0, 1] (k agreement pairs, exact consistency) the Wilson interval at n = number of images
is conservative; it is exact for the paper's protocol of one pair per image.
"""

from __future__ import annotations

import math

import numpy as np

from shiftaudit.metrics.entries import Proportion, Summary

Z95 = 1.959963984540054


def wilson_interval(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    if n <= 0 or not math.isfinite(p):
        return (float("nan"), float("nan"))
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(max(p * (1 - p), 0.0) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_interval(values: np.ndarray, z: float = Z95) -> tuple[float, float]:
    """Normal-approximation interval of the mean of per-image values."""
    n = int(values.size)
    if n == 0:
        return (float("nan"), float("nan"))
    m = float(values.mean())
    if n == 1:
        return (m, m)
    half = z * float(values.std(ddof=1)) / math.sqrt(n)
    return (m - half, m + half)


def proportion(values: np.ndarray) -> Proportion:
    """Mean of per-image values in [0, 1] with its Wilson interval over images."""
    n = int(values.size)
    p = float(values.mean()) if n else float("nan")
    lo, hi = wilson_interval(p, n)
    return Proportion(p, lo, hi, n)


def summary(values: np.ndarray, bounds: tuple[float, float] | None = None) -> Summary:
    """Mean (with its normal-approximation 95 % interval) and median of per-image values.

    ``bounds``: the range the quantity cannot leave (a standard deviation of a probability, a share): the interval is
    clipped to it, so a near-zero variation does not get a negative lower bound.
    """
    lo, hi = mean_interval(values)
    if bounds is not None and values.size:
        lo, hi = min(max(lo, bounds[0]), bounds[1]), min(max(hi, bounds[0]), bounds[1])
    return Summary(
        mean=float(values.mean()) if values.size else float("nan"),
        median=float(np.median(values)) if values.size else float("nan"),
        ci_low=lo,
        ci_high=hi,
        n=int(values.size),
    )
