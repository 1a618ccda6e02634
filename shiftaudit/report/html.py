"""One self-contained ``report.html``: pictures embedded as data URIs, inline CSS, no script, nothing fetched.

A single file survives being attached to a CI run, mailed or opened offline years later. Everything that comes from
the user (model names, paths, notes, class names) is HTML-escaped: a report must never run what a file name says;
control characters in it are shown as escapes (``\x1b``, as on the terminal), never written raw into the page.
"""

from __future__ import annotations

import base64
import html
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shiftaudit.errors import one_line
from shiftaudit.files import pending, write_text_atomic
from shiftaudit.report.rows import LAYER_CAPTION, LAYER_HEADER, audit_rows, compare_rows, layer_rows
from shiftaudit.report.terminal import describe_run
from shiftaudit.result import AuditResult

CAPTIONS = {
    "adversarial": "Accuracy when an adversary may shift each image by up to r pixels (the paper's Fig. 9). An image "
    "counts as correct at r only if it is classified correctly at every shift in [-r, r]²; the band is the 95 % CI.",
    "variation": "Distribution over images of the classification variation: the standard deviation, over all shifts, "
    "of the probability of the correct class (Fig. 6). Lower is more shift-invariant.",
    "accuracy_map": "Accuracy as a function of the shift (dh, dw), zero shift at the centre, and along the diagonal "
    "(Fig. 11). A shift-invariant model is flat.",
    "flips": "Correctly classified images that a small {shift} makes wrong, with the probability of the "
    "correct class at every shift (Fig. 2).",
    "flips_unlabelled": "Images whose prediction a small {shift} changes (no labels: the reference is the prediction "
    "without shift), with 1 where the shifted prediction agrees with it and 0 where it changed.",
    "consistency": "Distribution over images of per-image consistency: the share of shift pairs (or sampled pairs) "
    "that get the same prediction. 1 means the prediction never changes; needs no labels.",
    "layers": "Per-layer distance from shift-equivariance over shifts (Fig. 4): blue is exactly equivariant, red is "
    "half the distance between two different images.",
}

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
main{max-width:1080px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d8dce3;padding-bottom:4px}
.sub{color:#555;margin:0 0 16px}
table{border-collapse:collapse;background:#fff;margin:4px 0}
th,td{padding:5px 12px;border-bottom:1px solid #e6e8ec;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums}td.ci{color:#777;text-align:right}
figure{background:#fff;margin:12px 0;padding:12px;border:1px solid #e0e3e8}
figure img{max-width:100%;height:auto;display:block}figcaption{color:#444;margin-top:6px}
.verdict{padding:10px 14px;font-weight:600;margin:12px 0}
.pass{background:#e3f4e6;color:#18602a;border-left:5px solid #2e9a4a}
.fail{background:#fbe5e5;color:#8a1c1c;border-left:5px solid #c93a3a}
code,.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12.5px}
footer{color:#888;margin-top:32px;font-size:12px}
"""


def esc(value: Any) -> str:
    return html.escape(one_line("" if value is None else str(value)), quote=True)


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, or None when the bytes are not a PNG."""
    if len(data) < 24 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


SHIFT_NOUN = {
    "circular": "circular shift",
    "crop": "crop shift (new content entering at the border)",
    "subpixel": "sub-pixel shift",
}


def caption(stem: str, shift_mode: str = "circular") -> str:
    """The caption of picture ``stem``, naming the run's shift mode (a crop run's flips are not circular shifts)."""
    return CAPTIONS.get(stem, stem).replace("{shift}", SHIFT_NOUN.get(shift_mode, "shift"))


def _shift_mode(result: AuditResult) -> str:
    return str(result.settings.get("shift_mode") or result.settings.get("shifts", {}).get("mode") or "circular")


def _picture(item: Path | tuple[str, Path], shift_mode: str = "circular") -> str:
    caption_text, path = item if isinstance(item, tuple) else (caption(Path(item).stem, shift_mode), item)
    data = pending(path).read_bytes()  # the picture may still wait in its temporary file (all_or_nothing)
    size = png_size(data)
    dims = f' width="{size[0]}" height="{size[1]}"' if size else ""
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return (
        f'<figure id="fig-{esc(Path(path).stem)}"><img src="{uri}" alt="{esc(Path(path).stem)}"{dims}>'
        f"<figcaption>{esc(caption_text)}</figcaption></figure>"
    )


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None, classes: Sequence[str] = ()) -> str:
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            cls = f' class="{classes[i]}"' if i < len(classes) and classes[i] else ""
            cells.append(f"<td{cls}>{esc(cell)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _shift_text(shifts: dict[str, Any]) -> str:
    if not shifts:
        return "-"
    size = shifts.get("image_size") or ["?", "?"]
    if shifts.get("kind") == "all":
        text = f"all {shifts.get('count')} shifts of {size[0]}x{size[1]}"
    else:
        step = f", step {shifts['step']:g}" if shifts.get("step", 1) != 1 else ""
        text = (
            f"{shifts.get('count')} shifts in [-{shifts.get('max_shift')}, {shifts.get('max_shift')}]²{step} of "
            f"{size[0]}x{size[1]}"
        )
    mode = shifts.get("mode", "circular")
    padding = shifts.get("padding") or ("circular (wrap-around)" if mode == "circular" else "-")
    return f"{text}; shift mode {mode}; padding {padding}"


def _footer_shifts(result: AuditResult) -> str:
    mode = _shift_mode(result)
    return {
        "crop": "Shifts are crops of a larger canvas (the published ImageNet protocol)",
        "subpixel": "Shifts are sub-pixel Fourier phase shifts",
    }.get(mode, "Shifts are circular (Zhang 2019, Eq. 4)")


def settings_rows(result: AuditResult) -> list[tuple[str, str]]:
    """What was run, on what, how and with which versions: enough to reproduce the numbers."""
    m, d, s, env = result.model, result.data, result.settings, result.environment
    rows: list[tuple[str, str]] = []
    for key, label in (
        ("description", "Model"),
        ("arch", "Architecture"),
        ("source", "Checkpoint"),
        ("format", "Format"),
        ("num_classes", "Classes"),
        ("parameters", "Parameters"),
    ):
        if m.get(key) is not None:
            rows.append((label, f"{m[key]:,}" if key == "parameters" and isinstance(m[key], int) else str(m[key])))
    if m.get("patch"):
        rows.append(("Anti-aliasing patch", str(m["patch"])))
    rows.append(("Data", str(d.get("description", "-"))))
    size = d.get("image_size")
    rows.append(
        (
            "Images",
            f"{d.get('num_images', '?')}"
            + (f" at {size[0]}x{size[1]}" if size else "")
            + ("" if d.get("labelled") else ", unlabelled"),
        )
    )
    prep = d.get("preprocessing")
    if prep:
        resize = f"resize {prep['resize']}, " if prep.get("resize") else ""
        rows.append(
            (
                "Preprocessing",
                f"{prep.get('name', 'custom')}: {resize}crop {prep.get('size')}, mean {prep.get('mean')}, std {prep.get('std')}",
            )
        )
    rows.append(("Shift set", _shift_text(s.get("shifts", {}))))
    mode = s.get("mode", "-")
    if mode == "sampled":
        mode += f" ({s.get('pairs')} random pairs per image)"
    rows.append(("Mode", mode))
    rows.append(("Seed", str(s.get("seed", "-"))))
    rows.append(("Precision", str(s.get("precision", "-"))))
    rows.append(("Device", str(env.get("device_name") or env.get("device", "-"))))
    versions = ", ".join(f"{k} {env[k]}" for k in ("shiftaudit", "torch", "python") if env.get(k))
    rows.append(("Versions", versions or "-"))
    return rows


def _gate_html(gate: dict[str, Any] | None) -> str:
    if gate is None:
        return ""
    checks = gate.get("checks", [])
    failed = [c for c in checks if not c.get("passed")]
    if failed:
        verdict = f'<div class="verdict fail">Gate FAILED: {len(failed)} of {len(checks)} checks</div>'
    else:
        verdict = f'<div class="verdict pass">Gate passed: {len(checks)} checks</div>'
    rows = [("ok" if c.get("passed") else "FAIL", c.get("message", "")) for c in checks]
    return f"<h2>Gate</h2>{verdict}" + _table(rows, ("Result", "Check"), ("", "mono"))


def render_html(result: AuditResult, pictures: Sequence[Path | tuple[str, Path]] = ()) -> str:
    """The page as a string (see :func:`write_html_report`)."""
    from shiftaudit import __version__  # local: read per call (tests change it)

    title = f"shiftaudit report: {result.model.get('arch') or result.model.get('description') or 'model'}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>",
        f"<h1>{esc(title)}</h1>",
        f'<p class="sub">{esc(describe_run(result))}</p>',
    ]
    gate = _gate_html(result.gate)
    if gate:
        parts.append(gate)
    parts.append("<h2>Summary</h2>")
    parts.append(_table(audit_rows(result), ("Metric", "Value", "95% CI"), ("", "num", "ci")))
    if "layers" in result.metrics:
        parts.append("<h2>Per-layer distances</h2>")
        parts.append(_table(layer_rows(result.metrics["layers"]), LAYER_HEADER, ("", "num", "num", "num", "num", "num", "num")))
        parts.append(f'<p class="sub">{esc(LAYER_CAPTION)}</p>')
    if pictures:
        parts.append("<h2>Pictures</h2>")
        unlabelled = not result.data.get("labelled", True)
        parts.extend(
            _picture(
                (caption("flips_unlabelled", _shift_mode(result)), p)
                if unlabelled and not isinstance(p, tuple) and Path(p).stem == "flips"
                else p,
                _shift_mode(result),
            )
            for p in pictures
        )
    parts.append("<h2>Settings</h2>")
    parts.append(_table(settings_rows(result), None, ("", "mono")))
    if result.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in result.notes) + "</ul>")
    parts.append(
        f"<footer>Written by shiftaudit {esc(__version__)}; schema shiftaudit/audit-report v1. "
        f"{esc(_footer_shifts(result))}; intervals are 95 % over images.</footer>"
    )
    parts.append("</main></body></html>\n")
    return "\n".join(parts)


def write_html_report(result: AuditResult, path: str | Path, pictures: Sequence[Path | tuple[str, Path]] = ()) -> Path:
    """Write the self-contained page atomically; ``pictures`` are PNG paths (captioned by their stem) or (caption, path)."""
    return write_text_atomic(path, render_html(result, pictures))


def render_side_by_side_html(
    runs: Sequence[tuple[str, AuditResult]], pictures: Sequence[Sequence[Path]], title: str, intro: str = ""
) -> str:
    """One page with several runs of the same data side by side (``patch --eval --out``): the comparison table, then
    each kind of picture in one row, one column per run. ``pictures[i]`` are run i's PNGs (matched by file name)."""
    from shiftaudit import __version__  # local: read per call (tests change it)

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{CSS}.row{{display:flex;gap:12px}}.row>div{{flex:1;min-width:0}}"
        f".row h3{{font-size:14px;margin:8px 0 0}}main{{max-width:1600px}}</style></head><body><main>",
        f"<h1>{esc(title)}</h1>",
        f'<p class="sub">{esc(intro or describe_run(runs[0][1]))}</p>',
        "<h2>Summary</h2>",
    ]
    rows = compare_rows(list(runs))
    parts.append(
        _table(
            [[r.metric, *(r.cell(i) for i in range(len(runs)))] for r in rows],
            ("Metric", *(n for n, _ in runs)),
            ("", *("num" for _ in runs)),
        )
    )
    stems: list[str] = []
    for pics in pictures:
        for p in pics:
            if Path(p).stem not in stems:
                stems.append(Path(p).stem)
    if stems:
        parts.append("<h2>Pictures</h2>")
    for stem in stems:
        cells = []
        for (name, res), pics in zip(runs, pictures):
            match = [p for p in pics if Path(p).stem == stem]
            body = _picture((name, match[0]), _shift_mode(res)) if match else '<p class="sub">not available</p>'
            cells.append(f"<div><h3>{esc(name)}</h3>{body}</div>")
        parts.append(f'<p class="sub">{esc(caption(stem, _shift_mode(runs[0][1])))}</p><div class="row">{"".join(cells)}</div>')
    parts.append(
        f"<footer>Written by shiftaudit {esc(__version__)}. Each run's own report (report.json, report.html "
        "and its pictures) is in the sub-folder of its name.</footer>"
    )
    parts.append("</main></body></html>\n")
    return "\n".join(parts)
