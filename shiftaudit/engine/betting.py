"""An anytime-valid confidence sequence for the mean of observations in [0, 1], by betting.

A sequential gate looks at its running estimate after every round of draws and stops as soon as the threshold is
clearly on one side. A fixed-sample interval (Wilson) looked at again and again would be wrong far more often than its
nominal 5 %; a *confidence sequence* holds at every look at once: P(the mean ever leaves the interval) <= alpha.

This one is the predictable plug-in betting sequence of Waudby-Smith & Ramdas ("Estimating means of bounded random
variables by betting", JRSS-B 2024, §4-5): for a candidate mean m a gambler bets ``lambda_i (x_i - m)`` of its capital
on each observation, with a bet fixed before ``x_i`` is seen. If the true mean is at most m, the capital
``K+(m) = prod(1 + lambda_i (x_i - m))`` is a nonnegative supermartingale, and by Ville's inequality it reaches
``2 / alpha`` with probability at most ``alpha / 2``. The lower bound is the smallest m whose capital has not reached
that level; the upper bound comes from the mirror bet. The bets shrink with the running variance and the time,
``lambda_t = sqrt(2 log(2/alpha) / (var_{t-1} t log(1 + t)))``, truncated to ``c / m`` (``c / (1 - m)``) so the capital
stays positive. Because ``K+`` does not increase with m, each bound is found by bisection; the running intersection
over looks is still valid (the guarantee holds for all times simultaneously).

The observations are kept (a few bytes each) because every look re-evaluates the capital at new candidate means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

TRUNCATION = 0.5  # c: the largest fraction of capital a bet may risk (the paper uses 1/2 or 3/4)
BISECTIONS = 50  # bound precision 2^-50: far below any reported digit


@dataclass
class BettingSequence:
    """Observations in [0, 1] as they arrive, and an anytime-valid ``1 - alpha`` interval for their mean."""

    alpha: float
    observations: list[np.ndarray] = field(default_factory=list)
    low: float = 0.0
    high: float = 1.0
    count: int = 0
    total: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha!r}")

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else float("nan")

    def extend(self, x: np.ndarray) -> None:
        """Add observations (each in [0, 1]) and tighten the interval."""
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        if x.size == 0:
            return
        if not bool(np.all((x >= 0.0) & (x <= 1.0))):
            raise ValueError("betting observations must lie in [0, 1]")
        self.observations.append(x)
        self.count += int(x.size)
        self.total += float(x.sum())
        lo, hi = bounds(np.concatenate(self.observations), self.alpha)
        self.low, self.high = max(self.low, lo), min(self.high, hi)

    def below(self, threshold: float) -> bool:
        """The whole interval is below ``threshold``: the mean is below it (error at most alpha)."""
        return self.high < threshold

    def above(self, threshold: float) -> bool:
        """The whole interval is above ``threshold``."""
        return self.low > threshold


def bet_sizes(x: np.ndarray, alpha: float) -> np.ndarray:
    """The predictable bet before each observation (before truncation): it uses only the observations before it."""
    n = x.size
    t = np.arange(1, n + 1, dtype=np.float64)
    mu = (0.5 + np.cumsum(x)) / (t + 1)  # regularised running mean after observation t
    prev_mu = np.concatenate(([0.5], mu[:-1]))
    var = (0.25 + np.cumsum((x - prev_mu) ** 2)) / (t + 1)  # ... and the running variance
    prev_var = np.concatenate(([0.25], var[:-1]))
    return np.sqrt(2.0 * math.log(2.0 / alpha) / (prev_var * t * np.log1p(t)))


def log_capital_up(x: np.ndarray, lam: np.ndarray, m: float) -> float:
    """log K+(m): the capital of betting that the mean is above m (large when it is)."""
    bet = np.minimum(lam, TRUNCATION / m) if m > 0 else lam
    return float(np.log1p(bet * (x - m)).sum())


def log_capital_down(x: np.ndarray, lam: np.ndarray, m: float) -> float:
    """log K-(m): the capital of betting that the mean is below m."""
    bet = np.minimum(lam, TRUNCATION / (1.0 - m)) if m < 1 else lam
    return float(np.log1p(-bet * (x - m)).sum())


def bounds(x: np.ndarray, alpha: float) -> tuple[float, float]:
    """The betting interval at this look, each side at ``alpha / 2``: (smallest m not rejected by K+, largest m not
    rejected by K-)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return 0.0, 1.0
    lam = bet_sizes(x, alpha)
    level = math.log(2.0 / alpha)
    low = _bisect(lambda m: log_capital_up(x, lam, m) >= level, 0.0, 1.0, rejected_below=True)
    high = _bisect(lambda m: log_capital_down(x, lam, m) >= level, 0.0, 1.0, rejected_below=False)
    return low, high


def _bisect(rejected: object, lo: float, hi: float, *, rejected_below: bool) -> float:
    """The edge of the rejected region: candidates below the lower bound (above the upper) are rejected, and
    rejection is monotone in m, so halving the bracket finds the edge."""
    assert callable(rejected)
    if rejected_below:
        if not rejected(lo):
            return lo
        for _ in range(BISECTIONS):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if rejected(mid) else (lo, mid)
        return hi
    if not rejected(hi):
        return hi
    for _ in range(BISECTIONS):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if rejected(mid) else (mid, hi)
    return lo
