"""What a person reads of a report, as plain strings: the number formats, and the rows of the audit, compare and
per-layer tables. Shared by the terminal tables (:mod:`shiftaudit.report.terminal`), the HTML report and compare's JSON;
every number shown here is the JSON's, formatted."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any, TypeGuard

from shiftaudit.metrics import Reading, metric_classes
from shiftaudit.metrics.base import value_readings
from shiftaudit.metrics.layers import colour_scale
from shiftaudit.result import AuditResult


def _finite(v: Any) -> TypeGuard[float]:
    return isinstance(v, (int, float)) and math.isfinite(v)


def pct(v: float | None, digits: int = 1) -> str:
    """A fraction as a percentage; '-' for a value that was not measured (None, or NaN from an empty mean)."""
    return f"{100 * v:.{digits}f} %" if _finite(v) else "-"


def num(v: float | None, digits: int = 4) -> str:
    return f"{v:.{digits}f}" if _finite(v) else "-"


def ci_text(lo: float | None, hi: float | None, digits: int = 1, scale: float = 100.0) -> str:
    if not (_finite(lo) and _finite(hi)):
        return ""
    return f"[{scale * lo:.{digits}f}, {scale * hi:.{digits}f}]"


def headline_radii(radii: Sequence[float]) -> list[float]:
    """A few radii worth a column: 1, 2, 4, 8, 16... up to the largest measured."""
    if not radii:
        return []
    top = max(radii)
    picks: list[float] = [r for r in (1, 2, 4, 8, 16, 32, 64) if r <= top and r in radii]
    fine = [r for r in radii if 0 < r < 1]  # sub-pixel sets: the smallest fractional radius too
    if fine:
        picks.insert(0, min(fine))
    if top not in picks:
        picks.append(top)
    return picks


def result_readings(result: AuditResult, curves: str = "headline") -> list[Reading]:
    """Every number of the result a person reads, in table order: each registered metric's readings (by its
    ``display_order``), then any other metric entry that has a ``value`` (a caller's own metric, unregistered).

    ``curves``: ``headline`` keeps a few radii of a curve (1, 2, 4, ...: :func:`headline_radii`), ``all`` every one.
    """
    m = result.metrics
    out: list[Reading] = []
    claimed = set()
    for cls in sorted(metric_classes(), key=lambda c: c.display_order):
        claimed.add(cls.key()[0])
        entry = result.entry(*cls.key())
        if not isinstance(entry, Mapping):  # an entry, or a plug-in metric's JSON object
            continue
        found = cls.readings(entry, result.settings)
        if curves == "headline":
            keep = set(headline_radii([r.radius for r in found if r.radius is not None]))
            found = [r for r in found if r.radius is None or r.radius in keep]
        out += found
    for name, value in m.items():
        if name not in claimed and isinstance(value, dict) and "value" in value:
            out += value_readings(name, value)
    return out


def value_text(r: Reading) -> str:
    return pct(r.value, r.digits) if r.percent else num(r.value, r.digits)


def audit_rows(result: AuditResult) -> list[tuple[str, str, str]]:
    """(metric, value, 95% CI) rows shared by the table and the HTML report. Readings with parts of one label share a
    row: "Variation of P(correct), mean / median" shows both values and the first one's interval."""
    rows = []
    for _, parts in groupby(result_readings(result), key=lambda r: id(r) if r.part is None else r.label):
        first, *_ = group = list(parts)
        label = first.label if first.part is None else f"{first.label}, {' / '.join(str(g.part) for g in group)}"
        ci = ci_text(first.ci_low, first.ci_high, first.ci_digits, 100.0 if first.percent else 1.0)
        rows.append((label, " / ".join(value_text(g) for g in group), ci))
    return rows


def left_out_caption(result: AuditResult) -> str | None:
    """One line under the table naming the radii of a curve it leaves out (:func:`headline_radii` keeps a few), so
    that none is missed: they are in the JSON. r = 0 is the no-shift accuracy, shown on its own row."""
    shown = {r.label for r in result_readings(result)}
    radii = [
        r.radius for r in result_readings(result, curves="all") if r.radius is not None and r.radius != 0 and r.label not in shown
    ]
    if not radii:
        return None
    if len(radii) <= 4:
        which = f"at {', '.join(f'{r:g}' for r in radii)} px"
    else:
        which = f"at {len(radii)} more radii ({radii[0]:g} to {radii[-1]:g} px)"
    return f"Adversarial accuracy {which}: in the JSON report (metrics.adversarial), not shown."


@dataclass
class CompareRow:
    """One metric across runs: numbers, their 95 % intervals, and the change of each run from the first."""

    metric: str
    percent: bool  # values are fractions shown as %, changes in percentage points
    values: list[float | None]
    ci_low: list[float | None]
    ci_high: list[float | None]
    digits: int = 1  # decimals of a cell (of the percentage, for a percent row)

    def cell(self, i: int) -> str:
        v = self.values[i]
        return pct(v, self.digits) if self.percent else num(v, self.digits)

    def delta(self, i: int) -> float | None:
        """Change of run ``i`` from the first run (percentage points for percentages); None when either is unmeasured."""
        a, b = self.values[0], self.values[i]
        if not (_finite(a) and _finite(b)):
            return None
        return (b - a) * (100.0 if self.percent else 1.0)

    def significant(self, i: int) -> bool | None:
        """True when the 95 % intervals of run ``i`` and the first run do not overlap; None without intervals."""
        lo0, hi0, lo, hi = self.ci_low[0], self.ci_high[0], self.ci_low[i], self.ci_high[i]
        if None in (lo0, hi0, lo, hi):
            return None
        return bool(hi < lo0 or lo > hi0)  # type: ignore[operator]

    def delta_text(self, i: int) -> str:
        d = self.delta(i)
        if d is None:
            return ""
        number = "0" if abs(d) < 5e-13 else (f"{d:+.2f}" if self.percent else f"{d:+.4f}")
        text = number + (" pt" if self.percent else "")
        return text + (" *" if self.significant(i) else "")


SIGNIFICANCE_RULE = (
    "* = the two 95 % confidence intervals do not overlap (a conservative rule: such a change is very unlikely to be "
    "noise; an unmarked change may still be real)."
)


def compare_rows(results: list[tuple[str, AuditResult]]) -> list[CompareRow]:
    """Rows for every metric any run has, in table order; a curve's radii limited to the headline ones of all runs."""
    per_run = [{r.name: r for r in result_readings(res, curves="all")} for _, res in results]
    radii = {r.radius for run in per_run for r in run.values() if r.radius is not None}
    keep = set(headline_radii(sorted(radii)))
    rows = []
    for name in dict.fromkeys(k for run in per_run for k in run):
        entries = [run.get(name) for run in per_run]
        first = next(e for e in entries if e is not None)
        if first.radius is not None and first.radius not in keep:
            continue
        rows.append(
            CompareRow(
                name,
                first.percent,
                [_num(e.value) if e else None for e in entries],
                [_num(e.ci_low) if e else None for e in entries],
                [_num(e.ci_high) if e else None for e in entries],
                first.digits,
            )
        )
    return rows


def _num(v: Any) -> float | None:
    return None if v is None else float(v)


LAYER_HEADER = ("Layer", "Resolution", "Stride", "Equivariance", "Equiv. / (ref/2)", "Invariance", "Exact modulo")
LAYER_CAPTION = (
    "Distances from shift-equivariance and -invariance: cosine, averaged over shifts and images. Equiv. / (ref/2): "
    "the equivariance distance relative to half the distance between two different images, the heatmaps' colour "
    "scale (0 = blue, exactly equivariant; 1 = red), as in the paper's Fig. 4. Exact modulo N: distance ~0 at every "
    "shift that is a multiple of N (1 = exactly equivariant; '-' = at no modulo, e.g. zero padding)."
)


def layer_rows(layers: dict[str, Any]) -> list[tuple[str, ...]]:
    """Per layer: resolution, stride so far, mean distances (absolute and on the heatmap scale), exact modulo.
    Shared by the terminal table and the HTML report."""
    rows: list[tuple[str, ...]] = []
    for layer in layers["layers"]:
        h, w = layer["resolution"]
        scale = colour_scale(layer.get("reference_distance"))
        eq = layer["equivariance"]["mean"]
        rel = num(eq / scale, 3) if scale and _finite(eq) else "-"
        mod = layer.get("exact_modulo")
        rows.append(
            (
                str(layer["name"]),
                f"{h}x{w}",
                str(layer["stride"]),
                num(eq),
                rel,
                num(layer["invariance"]["mean"]),
                "-" if mod is None else f"{mod}",
            )
        )
    return rows
