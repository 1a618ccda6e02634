"""The CI gate: thresholds on the audit's headline numbers, each one a named pass/fail check.

``shiftaudit eval ... --min-consistency 0.95`` exits 1 when any check fails, so a retrain that loses shift
robustness fails the build. Each check carries the value, the threshold and the confidence interval so the
failure line says everything needed to judge it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from numbers import Real
from typing import Any, TypeVar

from shiftaudit.errors import UsageError
from shiftaudit.metrics.entries import Curve, Entry, Proportion, Summary
from shiftaudit.result import AuditResult


@dataclass(frozen=True)
class Threshold:
    metric: str  # "consistency" | "accuracy" | "variation" | "adversarial"
    bound: str  # "min" | "max"
    value: float
    radius: int | None = None

    @property
    def flag(self) -> str:
        if self.metric == "adversarial":
            return f"--min-adv-accuracy {self.radius}={self.value:g}"
        return f"--{self.bound}-{self.metric} {self.value:g}"

    @property
    def label(self) -> str:
        return f"adversarial accuracy at r={self.radius}" if self.metric == "adversarial" else self.metric


@dataclass
class Check:
    threshold: Threshold
    value: float
    ci_low: float | None
    ci_high: float | None
    passed: bool
    estimator: str

    def line(self) -> str:
        ci = f" (95% CI {self.ci_low:.4f}-{self.ci_high:.4f})" if self.ci_low is not None and self.ci_high is not None else ""
        verdict = "ok  " if self.passed else "FAIL"
        rel = ">=" if self.threshold.bound == "min" else "<="
        if not self.passed:
            rel = "<" if self.threshold.bound == "min" else ">"
        return f"{verdict} {self.threshold.label} {self.value:.4f}{ci} {rel} {self.threshold.value:g} ({self.threshold.flag})"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["threshold"] = asdict(self.threshold)
        d["flag"] = self.threshold.flag
        d["message"] = self.line()
        return d


@dataclass
class SequentialCheck(Check):
    """A check decided by the sequential gate: its interval is an anytime-valid confidence sequence at
    ``confidence`` (not a 95 % interval), and ``draws`` images were drawn. ``exact``: every image's value was known,
    so the value is the full audit's and the check was decided on it."""

    confidence: float = 0.99
    draws: int = 0
    exact: bool = False

    def line(self) -> str:
        verdict = "ok  " if self.passed else "FAIL"
        rel = {("min", True): ">=", ("min", False): "<", ("max", True): "<=", ("max", False): ">"}[
            (self.threshold.bound, self.passed)
        ]
        how = (
            f"exact: every image's value known, {self.draws} draws"
            if self.exact
            else f"{_percent(self.confidence)} confidence sequence {self.ci_low:.4f}-{self.ci_high:.4f}, {self.draws} draws"
        )
        return f"{verdict} {self.threshold.label} {self.value:.4f} ({how}) {rel} {self.threshold.value:g} ({self.threshold.flag})"

    def to_json(self) -> dict[str, Any]:
        d = super().to_json()
        if not self.exact:  # the key only where it says something: a sampled check reads as it always did
            del d["exact"]
        return d


def _percent(p: float) -> str:
    """99 %, 99.5 %, 99.75 %: as many digits as the level has (Bonferroni splits give odd levels)."""
    return f"{100 * p:.6g} %"


def sequential_gate(stats: Iterable[Any]) -> GateReport:
    """The gate report of a decided sequential run: one :class:`SequentialCheck` per threshold statistic
    (:class:`~shiftaudit.engine.sequential.GateStatistic`)."""
    checks: list[Check] = []
    for s in stats:
        entry = s.to_json()
        exact = bool(entry.get("exact"))
        checks.append(
            SequentialCheck(
                s.threshold,
                entry["estimate"],
                entry["ci_low"],
                entry["ci_high"],
                entry["decision"] == "pass",
                f"{'exact value of' if exact else 'sequential estimate of'} {s.threshold.label}",
                entry["confidence"],
                entry["draws"],
                exact,
            )
        )
    return GateReport(checks)


@dataclass
class GateReport:
    checks: list[Check]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "checks": [c.to_json() for c in self.checks]}


def _fraction(value: float, flag: str) -> float:
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"{flag} takes a fraction between 0 and 1 (e.g. 0.95), got {value:g}.")
    return value


def _variation_bound(value: float, flag: str) -> float:
    if not math.isfinite(value):  # inf would pass every model, nan none
        raise UsageError(f"{flag} takes a finite number >= 0 (e.g. 0.05), got {value:g}.")
    if value < 0:
        raise UsageError(f"{flag} must be >= 0, got {value:g}.")
    return value


def parse_adv_threshold(text: str) -> Threshold:
    m = re.fullmatch(r"\s*(\d+)\s*=\s*([0-9.]+)\s*", text)
    try:
        value = float(m.group(2)) if m else None
    except ValueError:  # "4=." or "4=1.2.3": digits and dots that are no number
        value = None
    if m is None or value is None:
        raise UsageError(f"--min-adv-accuracy takes RADIUS=FRACTION (e.g. 4=0.8), got {text!r}.")
    return Threshold("adversarial", "min", _fraction(value, "--min-adv-accuracy"), int(m.group(1)))


def build_thresholds(
    min_consistency: float | None = None,
    min_accuracy: float | None = None,
    max_variation: float | None = None,
    min_adv_accuracy: list[str] | None = None,
) -> list[Threshold]:
    out: list[Threshold] = []
    if min_consistency is not None:
        out.append(Threshold("consistency", "min", _fraction(min_consistency, "--min-consistency")))
    if min_accuracy is not None:
        out.append(Threshold("accuracy", "min", _fraction(min_accuracy, "--min-accuracy")))
    if max_variation is not None:
        out.append(Threshold("variation", "max", _variation_bound(max_variation, "--max-variation")))
    for text in min_adv_accuracy or []:
        out.append(parse_adv_threshold(text))
    return out


def validate_thresholds(
    thresholds: list[Threshold], *, labelled: bool, exhaustive: bool, radii: list[int] | list[float] | None
) -> None:
    """Refuse, before any work, a threshold the planned run cannot measure.

    ``radii``: the radii of the planned adversarial curve (the distinct radii of the shift set). A gate at a radius
    the set does not hold is refused: it would otherwise be judged on a smaller radius, i.e. on shifts never tested.
    """
    for t in thresholds:
        g = _gate_metric(t)
        if g.needs_labels and not labelled:
            raise UsageError(f"{t.flag} needs labelled data, but the data has no labels.")
        if g.needs_all_shifts and not exhaustive:
            raise UsageError(f"{t.flag} needs every shift evaluated; use --mode exhaustive or a smaller shift set.")
        if t.radius is not None and radii and t.radius not in radii:
            raise UsageError(unevaluated_radius_message(t, radii))


# Gate metrics that compare an image's shifted copies, and their value when the shift set holds only the zero shift:
# one copy per image, which always agrees with itself. A gate on them would pass on nothing.
ZERO_SHIFT_VALUES = {"consistency": "1", "variation": "0"}


def refuse_trivial_thresholds(thresholds: list[Threshold], shift_count: int) -> None:
    """Refuse, before any work, a threshold that the shift set makes true whatever the model: consistency or
    variation over the zero shift alone (``max_shift=0``). Accuracy, and adversarial accuracy at radius 0 (which is
    accuracy), measure the model at that shift and stay allowed."""
    if shift_count > 1:
        return
    for t in thresholds:
        if t.metric in ZERO_SHIFT_VALUES:
            raise UsageError(
                f"{t.flag} would pass on nothing: the shift set holds only the zero shift (max shift 0), where "
                f"{t.label} is {ZERO_SHIFT_VALUES[t.metric]} for every model; raise --max-shift."
            )


def unevaluated_radius_message(t: Threshold, radii: list[int] | list[float]) -> str:
    """One sentence: the radius asked for is not in the shift set, and which evaluated radii are nearest."""
    top = max(radii)
    assert t.radius is not None  # only radius thresholds have a radius to miss
    if t.radius > top:
        return f"{t.flag} asks for radius {t.radius} but the shift set only reaches {top:g}; raise --max-shift."
    below = max((r for r in radii if r < t.radius), default=None)
    above = min((r for r in radii if r > t.radius), default=None)
    nearest = " or ".join(f"{r:g}" for r in (below, above) if r is not None)
    listed = ", ".join(f"{r:g}" for r in radii)
    return (
        f"{t.flag} asks for radius {t.radius}, which the shift set does not evaluate (its radii are {listed}); "
        f"gate on the nearest evaluated radius ({nearest}) or pass --shift-step 1."
    )


@dataclass(frozen=True)
class GateMetric:
    """A headline number a threshold can bound: what it needs, and how to read it (value, 95 % interval, estimator)
    from a report's ``metrics`` (typed entries, :mod:`shiftaudit.metrics.entries`). Registered by name
    (:func:`register_gate`), so the gate names no metric itself."""

    name: str
    needs_labels: bool
    needs_all_shifts: bool
    read: Callable[[dict[str, Any], Threshold], tuple[float | None, float | None, float | None, str]]


_GATES: dict[str, GateMetric] = {}


def register_gate(metric: GateMetric) -> GateMetric:
    _GATES[metric.name] = metric
    return metric


Read = tuple[float | None, float | None, float | None, str]
E = TypeVar("E", bound=Entry)


def _entry(m: dict[str, Any], kind: type[E], *key: str) -> E | None:
    """The typed entry at a report key, or None where the report has none."""
    node: Any = m
    for part in key:
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, kind) else None


def _read_consistency(m: dict[str, Any], t: Threshold) -> Read:
    key = "exact" if _entry(m, Proportion, "consistency", "exact") is not None else "sampled"
    entry = _entry(m, Proportion, "consistency", key)
    if entry is None:  # a report whose audit left consistency out (or written by hand)
        raise UsageError(f"{t.flag} needs classification consistency, which the report does not have.")
    return entry.value, entry.ci_low, entry.ci_high, f"{key} consistency"


def _read_accuracy(m: dict[str, Any], t: Threshold) -> Read:
    entry = _entry(m, Proportion, "accuracy", "none")
    if entry is None:
        raise UsageError(f"{t.flag} needs labelled data, but the data has no labels.")
    return entry.value, entry.ci_low, entry.ci_high, "top-1 accuracy without shift"


def _read_variation(m: dict[str, Any], t: Threshold) -> Read:
    entry = _entry(m, Summary, "variation")
    if entry is None:
        raise UsageError(f"{t.flag} needs labelled data and every shift evaluated.")
    return entry.mean, entry.ci_low, entry.ci_high, "mean classification variation"


def _read_adversarial(m: dict[str, Any], t: Threshold) -> Read:
    adv = _entry(m, Curve, "adversarial")
    if adv is None:
        raise UsageError(f"{t.flag} needs labelled data and every shift evaluated.")
    if t.radius not in adv.radius:
        raise UsageError(unevaluated_radius_message(t, adv.radius))
    i = adv.radius.index(t.radius)
    return adv.accuracy[i], adv.ci_low[i], adv.ci_high[i], f"max-shift adversarial accuracy at r={t.radius}"


register_gate(GateMetric("consistency", needs_labels=False, needs_all_shifts=False, read=_read_consistency))
register_gate(GateMetric("accuracy", needs_labels=True, needs_all_shifts=False, read=_read_accuracy))
register_gate(GateMetric("variation", needs_labels=True, needs_all_shifts=True, read=_read_variation))
register_gate(GateMetric("adversarial", needs_labels=True, needs_all_shifts=True, read=_read_adversarial))


def _gate_metric(t: Threshold) -> GateMetric:
    try:
        return _GATES[t.metric]
    except KeyError:
        raise UsageError(f"No gate on {t.metric!r}; thresholds exist for {', '.join(_GATES)}.") from None


def evaluate_gate(result: AuditResult, thresholds: list[Threshold]) -> GateReport:
    """One check per threshold, judged on the result's numbers: a ``min`` holds at value >= threshold, a ``max`` at
    value <= threshold (exactly at the threshold passes)."""
    checks: list[Check] = []
    for t in thresholds:
        value, lo, hi, estimator = _gate_metric(t).read(result.metrics, t)
        if value is None:  # a report read back with null where the number was
            raise UsageError(f"{t.flag} needs the {estimator}, which the report has no value for.")
        passed = value >= t.value if t.bound == "min" else value <= t.value
        checks.append(Check(t, float(value), lo, hi, bool(passed), estimator))
    return GateReport(checks)


THRESHOLD_KEYS = ("min_consistency", "min_accuracy", "max_variation", "min_adv_accuracy")


def thresholds_from(thresholds: Mapping[str, Any] | Iterable[Any]) -> list[Threshold]:
    """The :class:`Threshold` list from a mapping (or a list of them), each value checked: a number (not a bool, not
    NaN), a fraction for the ``min_*`` keys, whole radii for adversarial accuracy (``{radius: fraction}`` or the
    CLI's ``["RADIUS=FRACTION", ...]``). Messages name the Python keys, not the CLI flags."""
    if isinstance(thresholds, (str, bytes)) or not isinstance(thresholds, (Mapping, Iterable)):
        raise UsageError(
            "thresholds takes a mapping such as {'min_consistency': 0.95} or a list of Threshold, "
            f"got {type(thresholds).__name__}."
        )
    if not isinstance(thresholds, Mapping):
        out = list(thresholds)
        bad = next((t for t in out if not isinstance(t, Threshold)), None)
        if bad is not None:
            raise UsageError(f"thresholds lists shiftaudit.Threshold values, got a {type(bad).__name__}.")
        return [check_threshold(t) for t in out]
    unknown = sorted(str(k) for k in set(thresholds) - set(THRESHOLD_KEYS))
    if unknown:
        raise UsageError(f"Unknown thresholds {', '.join(unknown)}; use {', '.join(THRESHOLD_KEYS)}.")
    out = []
    if thresholds.get("min_consistency") is not None:
        out.append(Threshold("consistency", "min", _checked_fraction(thresholds["min_consistency"], "min_consistency")))
    if thresholds.get("min_accuracy") is not None:
        out.append(Threshold("accuracy", "min", _checked_fraction(thresholds["min_accuracy"], "min_accuracy")))
    if thresholds.get("max_variation") is not None:
        value = _variation_bound(_checked_number(thresholds["max_variation"], "max_variation"), "max_variation")
        out.append(Threshold("variation", "max", value))
    adversarial = thresholds.get("min_adv_accuracy")
    if isinstance(adversarial, (list, tuple)) and all(isinstance(a, str) for a in adversarial):
        out += [parse_adv_threshold(a) for a in adversarial]
    elif adversarial is not None:
        if not isinstance(adversarial, Mapping):
            raise UsageError(f"min_adv_accuracy takes a mapping radius -> fraction such as {{2: 0.8}}, got {adversarial!r}.")
        for radius, value in adversarial.items():
            if isinstance(radius, bool) or not isinstance(radius, int) or radius < 0:
                raise UsageError(f"min_adv_accuracy takes whole radii >= 0 in px as keys, got {radius!r}.")
            out.append(Threshold("adversarial", "min", _checked_fraction(value, f"min_adv_accuracy[{radius}]"), radius))
    return out


def _checked_number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or math.isnan(float(value)):
        raise UsageError(f"{name} takes a number, got {value!r}.")
    if math.isinf(float(value)):
        raise UsageError(f"{name} takes a finite number, got {float(value):g}.")
    return float(value)


FRACTION_GATES = ("consistency", "accuracy", "adversarial")  # shares: a bound outside [0, 1] is a typo


def check_threshold(t: Threshold) -> Threshold:
    """A :class:`Threshold` made by hand, checked like the flags and the mapping: a known metric and bound, a finite
    number (a fraction for the share metrics, >= 0 for variation), a whole radius >= 0 for adversarial accuracy."""
    _gate_metric(t)
    if t.bound not in ("min", "max"):
        raise UsageError(f"A Threshold's bound is 'min' or 'max', got {t.bound!r}.")
    name = f"Threshold({t.metric!r}, {t.bound!r})"
    value = _checked_number(t.value, name)
    if t.metric in FRACTION_GATES:
        _fraction(value, name)
    elif t.metric == "variation":
        _variation_bound(value, name)
    if t.metric == "adversarial" and (isinstance(t.radius, bool) or not isinstance(t.radius, int) or t.radius < 0):
        raise UsageError(f"{name} takes a whole radius >= 0 in px, got {t.radius!r}.")
    return t


def _checked_fraction(value: Any, name: str) -> float:
    return _fraction(_checked_number(value, name), name)


def gate(result: AuditResult, thresholds: Mapping[str, Any] | Iterable[Threshold]) -> GateReport:
    """The CI gate from Python: judge ``result`` against ``thresholds``, a list of :class:`Threshold` or a mapping
    like ``{"min_consistency": 0.95, "min_accuracy": 0.9, "max_variation": 0.05, "min_adv_accuracy": {1: 0.9}}``
    (read by :func:`thresholds_from`).

    ``report.passed`` is the verdict, ``report.failures`` the failed checks, each with its one-line message.
    """
    return evaluate_gate(result, thresholds_from(thresholds))
