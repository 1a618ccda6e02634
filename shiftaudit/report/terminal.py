"""Rich tables for the terminal. Pure rendering: takes results, returns rich renderables."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from ..inspection import Inspection
from ..result import AuditResult


def pct(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{100 * v:.{digits}f} %"


def ci_text(lo: float | None, hi: float | None, digits: int = 1) -> str:
    if lo is None or hi is None:
        return ""
    return f"[{100 * lo:.{digits}f}, {100 * hi:.{digits}f}]"


def headline_radii(radii: list[int]) -> list[int]:
    """A few radii worth a column: 1, 2, 4, 8, 16... up to the largest measured."""
    if not radii:
        return []
    top = max(radii)
    picks = [r for r in (1, 2, 4, 8, 16, 32, 64) if r <= top and r in radii]
    if top not in picks:
        picks.append(top)
    return picks


def audit_rows(result: AuditResult) -> list[tuple[str, str, str]]:
    """(metric, value, 95% CI) rows shared by the table and the HTML report."""
    m = result.metrics
    rows: list[tuple[str, str, str]] = []
    acc = m.get("accuracy", {})
    if "none" in acc:
        rows.append(("Accuracy, no shift", pct(acc["none"]["value"]), ci_text(acc["none"]["ci_low"], acc["none"]["ci_high"])))
    if "random" in acc:
        rows.append(("Accuracy, random shift", pct(acc["random"]["value"]), ci_text(acc["random"]["ci_low"], acc["random"]["ci_high"])))
    cons = m.get("consistency", {})
    if "exact" in cons:
        rows.append(("Consistency (exact, all shifts)", pct(cons["exact"]["value"], 2), ci_text(cons["exact"]["ci_low"], cons["exact"]["ci_high"])))
    if "sampled" in cons:
        k = result.settings.get("pairs", "?")
        rows.append((f"Consistency (sampled, {k} pairs/image)", pct(cons["sampled"]["value"], 2), ci_text(cons["sampled"]["ci_low"], cons["sampled"]["ci_high"])))
    if "variation" in m:
        v = m["variation"]
        rows.append(("Variation of P(correct), mean / median", f"{v['mean']:.4f} / {v['median']:.4f}", f"[{v['ci_low']:.4f}, {v['ci_high']:.4f}]"))
    if "adversarial" in m:
        adv = m["adversarial"]
        for r in headline_radii(adv["radius"]):
            i = adv["radius"].index(r)
            rows.append((f"Adversarial accuracy, max shift {r} px", pct(adv["accuracy"][i]), ci_text(adv["ci_low"][i], adv["ci_high"][i])))
    if "accuracy_map" in m:
        amap = m["accuracy_map"]
        rows.append(("Accuracy over shifts, worst / best", f"{pct(amap['min'])} / {pct(amap['max'])}", ""))
    for name, value in m.items():
        if name in ("accuracy", "consistency", "variation", "adversarial", "accuracy_map"):
            continue
        if isinstance(value, dict) and "value" in value:
            rows.append((name.replace("_", " "), f"{value['value']:.4f}", ci_text(value.get("ci_low"), value.get("ci_high"))))
    return rows


def audit_table(result: AuditResult, title: str | None = None) -> Table:
    t = Table(title=title or "Shift audit", title_justify="left", show_edge=False, pad_edge=False)
    t.add_column("Metric")
    t.add_column("Value", justify="right")
    t.add_column("95% CI", justify="right", style="dim")
    for row in audit_rows(result):
        t.add_row(*row)
    return t


def describe_run(result: AuditResult) -> str:
    model = result.model.get("arch") or result.model.get("description") or "model"
    src = result.model.get("source")
    data = result.data.get("description", "")
    s = result.settings.get("shifts", {})
    shifts = f"{s.get('count', '?')} circular shifts"
    if s.get("kind") == "all":
        shifts = f"all {s.get('count')} circular shifts"
    elif s.get("max_shift") is not None:
        shifts += f" within +/-{s['max_shift']} px" + (f", step {s['step']}" if s.get("step", 1) > 1 else "")
    mode = result.settings.get("mode", "")
    dev = result.environment.get("device_name") or result.environment.get("device", "")
    name = f"{model} ({src})" if src else str(model)
    return f"{name} on {data}; {shifts}, {mode}; {dev}"


def comparison_table(results: list[tuple[str, AuditResult]], title: str = "Before / after") -> Table:
    """Side-by-side rows for several results (same data), with the change from the first."""
    t = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    t.add_column("Metric")
    for name, _ in results:
        t.add_column(name, justify="right")
    if len(results) > 1:
        t.add_column("Change", justify="right")
    rows = [dict((r[0], r[1]) for r in audit_rows(res)) for _, res in results]
    keys = list(dict.fromkeys(k for row in rows for k in row))
    for key in keys:
        cells = [row.get(key, "-") for row in rows]
        change = ""
        if len(results) > 1:
            change = _delta(cells[0], cells[-1])
        t.add_row(key, *cells, *([change] if len(results) > 1 else []))
    return t


def _delta(a: str, b: str) -> str:
    def num(s: str) -> float | None:
        try:
            return float(s.split("/")[0].replace("%", "").strip())
        except ValueError:
            return None

    x, y = num(a), num(b)
    if x is None or y is None:
        return ""
    unit = " pt" if "%" in a else ""
    d = y - x
    if abs(d) < 1e-12:
        return Text("0" + unit, style="dim").plain
    return f"{d:+.2f}{unit}" if unit else f"{d:+.4f}"


def inspection_table(insp: Inspection, extra_columns: dict[str, dict[str, Any]] | None = None) -> Table:
    t = Table(
        title=f"Downsampling points at {insp.input_size[0]}x{insp.input_size[1]} (total stride {insp.total_stride})",
        title_justify="left",
        show_edge=False,
        pad_edge=False,
    )
    for col in ("Layer", "Type", "Kernel", "Stride", "In", "Out", "Role"):
        t.add_column(col, justify="right" if col in ("Stride", "In", "Out", "Kernel") else "left")
    extra_columns = extra_columns or {}
    for col in extra_columns:
        t.add_column(col)
    squeeze = 0
    for p in insp.points:
        if p.role == "squeeze":
            squeeze += 1
            continue
        k = f"{p.kernel[0]}x{p.kernel[1]}" if p.kernel else "-"
        s = f"{p.stride[0]}" if p.stride and p.stride[0] == p.stride[1] else (f"{p.stride[0]}x{p.stride[1]}" if p.stride else "-")
        t.add_row(
            p.name,
            p.module,
            k,
            s,
            f"{p.in_size[0]}x{p.in_size[1]}",
            f"{p.out_size[0]}x{p.out_size[1]}",
            p.role,
            *[str(extra_columns[c].get(p.name, "")) for c in extra_columns],
        )
    if squeeze:
        t.caption = f"+ {squeeze} squeeze-excitation pools inside blocks (gating, not downsampling)"
    return t


def layers_table(layers: dict[str, Any]) -> Table:
    """Per layer: resolution, stride so far, mean distances (absolute and relative to the layer's reference), exact modulo."""
    t = Table(title="Per-layer distance from shift-equivariance (cosine, averaged over shifts and images)", title_justify="left", show_edge=False, pad_edge=False)
    for col in ("Layer", "Resolution", "Stride", "Equivariance", "/ reference", "Invariance", "Exact modulo"):
        t.add_column(col, justify="left" if col == "Layer" else "right")
    for layer in layers["layers"]:
        h, w = layer["resolution"]
        ref = layer.get("reference_distance")
        eq = layer["equivariance"]["mean"]
        rel = f"{eq / ref:.3f}" if ref else "-"
        mod = layer.get("exact_modulo")
        t.add_row(
            layer["name"], f"{h}x{w}", str(layer["stride"]), f"{eq:.4f}", rel, f"{layer['invariance']['mean']:.4f}",
            "-" if mod is None else f"{mod}",
        )
    t.caption = "Exact modulo N: distance ~0 at every shift that is a multiple of N (1 = exactly equivariant; '-' = at no modulo, e.g. zero padding)."
    return t
