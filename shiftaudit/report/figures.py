"""The report's pictures, after the paper's figures: adversarial curve (Fig. 9), variation distribution (Fig. 6),
accuracy over shifts (Fig. 11) and examples that a small shift flips (Fig. 2).

Each ``plot_*`` function writes one PNG atomically and returns its path, or returns ``None`` when the result does not
hold what the picture needs (sampled mode, unlabelled data), so a report folder simply has fewer pictures. Figures
are saved at a fixed size (``figsize * DPI`` pixels, no tight bounding box) so that pages and tests can rely on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from shiftaudit.errors import one_line
from shiftaudit.files import atomic_path
from shiftaudit.report.plotting import PNG_METADATA, plain_text, plt
from shiftaudit.result import AuditResult
from shiftaudit.shifts.modes import fourier_shift

DPI = 100
ADVERSARIAL_SIZE = (7.0, 4.2)
VARIATION_SIZE = (7.0, 4.2)
ACCURACY_MAP_SIZE = (10.0, 4.2)
CONSISTENCY_SIZE = (7.0, 4.2)
FLIP_ROW_HEIGHT = 2.3
VARIATION_FLOOR = 1e-6  # zero variation (identical P(correct) at every shift) is drawn in the lowest bin

Runs = AuditResult | Sequence[tuple[str, AuditResult]]


def _runs(runs: Runs) -> list[tuple[str, AuditResult]]:
    if isinstance(runs, AuditResult):
        return [(_short_name(runs), runs)]
    return [(one_line(name), result) for name, result in runs]  # a run's name is the user's: shown, never obeyed


def _short_name(result: AuditResult) -> str:
    m = result.model
    name = m.get("arch") or m.get("description") or "model"
    return one_line(str(name).rsplit(":", 1)[-1])


def _figure(size: tuple[float, float], ncols: int = 1, nrows: int = 1, **kw: Any) -> tuple[Figure, np.ndarray]:
    return plt.subplots(nrows, ncols, figsize=size, dpi=DPI, layout="constrained", squeeze=False, **kw)


def _save(fig: Figure, path: str | Path) -> Path:
    """PNG at exactly figsize * DPI pixels, written atomically."""
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=DPI, metadata=PNG_METADATA)
    finally:
        plt.close(fig)
    return Path(path)


def figure_pixels(size: tuple[float, float]) -> tuple[int, int]:
    """(width, height) in pixels of a figure of ``size`` inches, as saved here."""
    return (round(size[0] * DPI), round(size[1] * DPI))


# -- Fig. 9: accuracy against a max-shift adversary ------------------------------------------------------------------
@plain_text
def plot_adversarial_curve(runs: Runs, path: str | Path, title: str | None = None) -> Path | None:
    """Accuracy when an adversary may shift each image by up to r px, with the 95 % band; one line per run."""
    runs = [(name, r) for name, r in _runs(runs) if r.metrics.get("adversarial")]
    if not runs:
        return None
    fig, axes = _figure(ADVERSARIAL_SIZE)
    ax = axes[0, 0]
    top = 0
    evaluated: set[float] = set()
    for i, (name, res) in enumerate(runs):
        adv = res.metrics["adversarial"]
        r = np.asarray(adv["radius"], dtype=float)
        acc = np.asarray([np.nan if v is None else v for v in adv["accuracy"]], dtype=float)
        lo = np.asarray([np.nan if v is None else v for v in adv["ci_low"]], dtype=float)
        hi = np.asarray([np.nan if v is None else v for v in adv["ci_high"]], dtype=float)
        colour = f"C{i % 10}"
        # points only where a radius was evaluated; a grid with gaps (step 4: no r = 1..3) gets a dotted guide, not
        # a solid line that reads as measured values in between
        steps = np.diff(r)
        gaps = steps.size > 0 and (steps.max() > 1 + 1e-9 or not np.allclose(steps, steps[0]))
        ax.plot(
            r,
            100 * acc,
            marker="o",
            markersize=4,
            color=colour,
            linestyle=":" if gaps else "-",
            label=f"{name} (n={adv.get('n', '?')})",
        )
        ax.fill_between(r, 100 * lo, 100 * hi, color=colour, alpha=0.15, linewidth=0)
        top = max(top, int(np.ceil(r.max())) if r.size else 0)
        evaluated.update(r.tolist())
    ax.set_xlabel("Max adversarial shift [px] (ticks: the radii evaluated)")
    ax.set_ylabel("Classification accuracy [%]")
    ax.set_xlim(-0.25, max(1, top) + 0.25)
    if 1 < len(evaluated) <= 20:
        ax.set_xticks(sorted(evaluated))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(title or "Accuracy under a max-shift adversary (band: 95 % CI)", fontsize=10)
    return _save(fig, path)


# -- Fig. 6: per-image classification variation on a log axis --------------------------------------------------------
@plain_text
def plot_variation_distribution(runs: Runs, path: str | Path, title: str | None = None) -> Path | None:
    """Histogram over images of the std of P(correct class) across shifts, on log-spaced bins; one line per run."""
    series = []
    for name, res in _runs(runs):
        kept = [v for v in res.per_image.get("variation", []) if v is not None]
        if kept:
            series.append((name, np.asarray(kept, dtype=float), res.variation))
    if not series:
        return None
    fig, axes = _figure(VARIATION_SIZE)
    ax = axes[0, 0]
    bins = np.logspace(math.log10(VARIATION_FLOOR), 0, 37)
    zeros_note = []
    for i, (name, values, mean) in enumerate(series):
        colour = f"C{i % 10}"
        clipped = np.clip(values, VARIATION_FLOOR, 1.0)
        counts, _ = np.histogram(clipped, bins=bins)
        share = 100 * counts / max(1, values.size)
        label = f"{name} (mean {mean:.4f})" if mean is not None else name
        ax.stairs(
            share, bins, color=colour, linewidth=1.6, label=label, fill=len(series) == 1, alpha=0.8 if len(series) == 1 else 1.0
        )
        if mean is not None and mean > 0:
            ax.axvline(mean, color=colour, linestyle="--", linewidth=1)
        n_zero = int((values < VARIATION_FLOOR).sum())
        if n_zero:
            zeros_note.append(f"{name}: {n_zero} images below {VARIATION_FLOOR:g}, drawn in the first bin")
    ax.set_xscale("log")
    ax.set_xlim(VARIATION_FLOOR, 1.0)
    ax.set_xlabel("Variation in probability of correct classification (std over shifts)")
    ax.set_ylabel("Share of images [%]")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(title or "Distribution of per-image classification variation (dashed: mean)", fontsize=10)
    if zeros_note:
        ax.text(0.99, 0.97, "\n".join(zeros_note), transform=ax.transAxes, ha="right", va="top", fontsize=7, color="0.3")
    return _save(fig, path)


# -- Fig. 11: accuracy as a function of the shift -----------------------------------------------------------------
def _as_grid(rows: list[list[float | None]]) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float)


def _extent(dh: list[int], dw: list[int]) -> tuple[float, float, float, float]:
    """imshow extent that centres each cell on its shift, also on a grid with a step (dh down, dw across)."""
    sh = (dh[1] - dh[0]) / 2 if len(dh) > 1 else 0.5
    sw = (dw[1] - dw[0]) / 2 if len(dw) > 1 else 0.5
    return (dw[0] - sw, dw[-1] + sw, dh[-1] + sh, dh[0] - sh)


@plain_text
def plot_accuracy_map(runs: Runs, path: str | Path, title: str | None = None) -> Path | None:
    """Left: accuracy at each (dh, dw) of the first run, zero shift at the centre. Right: the diagonal dh = dw, per run."""
    runs = [(name, r) for name, r in _runs(runs) if r.metrics.get("accuracy_map")]
    if not runs:
        return None
    fig, axes = _figure(ACCURACY_MAP_SIZE, ncols=2)
    ax_map, ax_diag = axes[0]
    name0, first = runs[0]
    amap = first.metrics["accuracy_map"]
    grid = 100 * _as_grid(amap["accuracy"])
    dh, dw = amap["dh"], amap["dw"]
    extent = _extent(dh, dw)
    image = ax_map.imshow(grid, cmap="viridis", extent=extent, interpolation="nearest", aspect="equal")
    cbar = fig.colorbar(image, ax=ax_map, shrink=0.9)
    cbar.set_label("accuracy [%]", fontsize=8)
    ax_map.set_xlabel("horizontal shift dw [px]")
    ax_map.set_ylabel("vertical shift dh [px]")
    ax_map.set_title(f"Accuracy over shifts: {name0}", fontsize=9)
    for i, (name, res) in enumerate(runs):
        diag = res.metrics["accuracy_map"]["diagonal"]
        acc = [np.nan if v is None else 100 * v for v in diag["accuracy"]]
        ax_diag.plot(diag["shift"], acc, marker="o", markersize=3, color=f"C{i % 10}", label=name)
    ax_diag.set_xlabel("diagonal shift dh = dw [px]")
    ax_diag.set_ylabel("accuracy [%]")
    ax_diag.grid(True, alpha=0.3)
    ax_diag.legend(fontsize=8)
    ax_diag.set_title("Accuracy along the diagonal", fontsize=9)
    fig.suptitle(title or "Accuracy as a function of the shift", fontsize=10)
    return _save(fig, path)


# -- Fig. 2: examples that a small shift flips ---------------------------------------------------------------------
def _display_image(dataset: Any, image_id: int) -> np.ndarray | None:
    """The image as the model saw it, un-normalised to [0, 1] (H, W, C), or None when the data cannot give it back."""
    try:
        x = dataset[image_id][0]
    except Exception:  # a picture is optional: an image that cannot be read is simply not drawn
        return None
    arr = np.asarray(x.detach().cpu().float() if hasattr(x, "detach") else x, dtype=float)
    if arr.ndim != 3:
        return None
    prep = getattr(dataset, "preprocessing", None)
    if prep is not None and len(prep.mean) == arr.shape[0]:
        arr = arr * np.asarray(prep.std)[:, None, None] + np.asarray(prep.mean)[:, None, None]
    else:
        lo, hi = np.nanmin(arr), np.nanmax(arr)
        arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    arr = np.clip(np.nan_to_num(arr), 0.0, 1.0).transpose(1, 2, 0)
    return arr[:, :, 0] if arr.shape[2] == 1 else arr[:, :, :3]


def _class_name(dataset: Any, index: int) -> str:
    classes = getattr(dataset, "classes", None) if dataset is not None else None
    if classes and 0 <= index < len(classes):
        return one_line(str(classes[index]))
    return f"class {index}"


def flip_examples_size(n_examples: int, with_images: bool) -> tuple[float, float]:
    """Figure size in inches of :func:`plot_flip_examples`: one row per example, four panels with images, else two."""
    return ((10.0 if with_images else 6.4), FLIP_ROW_HEIGHT * n_examples + 0.4)


@plain_text
def plot_flip_examples(result: AuditResult, path: str | Path, dataset: Any = None, limit: int = 4) -> Path | None:
    """Per example: the image and the shifted copy that is misclassified (when ``dataset`` is given), P(correct) over
    (dh, dw) with the breaking shift marked, and P(correct) along the horizontal and diagonal shifts."""
    flips = result.metrics.get("flip_examples") or {}
    examples = list(flips.get("examples", []))[:limit]
    if not examples:
        return None
    unlabelled = flips.get("reference") == "zero-shift prediction"
    quantity = "same prediction as unshifted" if unlabelled else "P(correct)"
    images = [_display_image(dataset, ex["image_id"]) for ex in examples] if dataset is not None else [None] * len(examples)
    with_images = any(img is not None for img in images)
    ncols = 4 if with_images else 2
    fig, axes = _figure(flip_examples_size(len(examples), with_images), ncols=ncols, nrows=len(examples))
    dh, dw = flips["dh"], flips["dw"]
    extent = _extent(dh, dw)
    heat = None
    for row, (ex, img) in enumerate(zip(examples, images)):
        cells = list(axes[row])
        label = _class_name(dataset, ex["label"])
        fh, fw = ex["flip_shift"]
        wrong = _class_name(dataset, ex["flip_prediction"])
        if with_images:
            ax_img, ax_shift = cells[0], cells[1]
            cells = cells[2:]
            for ax in (ax_img, ax_shift):
                ax.set_xticks([])
                ax.set_yticks([])
            if img is not None:
                cmap = "gray" if img.ndim == 2 else None
                plain, shifted = _as_shown(img, fh, fw, result)
                ax_img.imshow(plain, cmap=cmap, interpolation="nearest")
                ax_shift.imshow(shifted, cmap=cmap, interpolation="nearest")
            ax_img.set_title(f"{_image_name(ex)}: {label}", fontsize=8)
            ax_shift.set_title(f"{_shift_word(result)} ({fh:+g}, {fw:+g}): {wrong}", fontsize=8, color="C3")
        ax_heat, ax_curve = cells
        grid = _as_grid(ex["p_correct"])
        heat = ax_heat.imshow(grid, cmap="RdYlBu", vmin=0.0, vmax=1.0, extent=extent, interpolation="nearest")
        ax_heat.plot([fw], [fh], marker="x", color="black", markersize=7, mew=2)
        who = "" if with_images else f"{_image_name(ex)} ({label} -> {wrong}): "
        ax_heat.set_title(f"{who}{quantity}, flips at r={ex['first_failure_radius']}", fontsize=8)
        ax_heat.tick_params(labelsize=7)
        _flip_curves(ax_curve, grid, dh, dw, "same prediction" if unlabelled else "P(correct)")
        if row == 0:
            ax_curve.legend(fontsize=7, loc="lower left")
        if row == len(examples) - 1:
            ax_heat.set_xlabel("dw [px]", fontsize=8)
            ax_curve.set_xlabel("shift [px]", fontsize=8)
    if heat is not None:
        fig.colorbar(heat, ax=axes.ravel().tolist(), shrink=0.8, label=f"{quantity} in the heatmaps")
    if unlabelled:
        fig.suptitle("Images whose prediction a small shift changes (no labels; x marks the first changing shift)", fontsize=10)
    else:
        fig.suptitle("Correctly classified images that a small shift flips (x marks the breaking shift)", fontsize=10)
    return _save(fig, path)


def _image_name(ex: dict[str, Any]) -> str:
    """The example's file name when the data are files (so the photo can be found), else its index."""
    path = ex.get("path")
    if path:
        name = one_line(str(path).rsplit("/", 1)[-1])
        return name if len(name) <= 40 else name[:18] + "..." + name[-19:]
    return f"image {ex['image_id']}"


# -- per-image consistency: how often the prediction survives a shift, image by image ------------------------------
@plain_text
def plot_consistency_histogram(runs: Runs, path: str | Path, title: str | None = None) -> Path | None:
    """Histogram over images of per-image consistency (exact: share of shift pairs with the same prediction; else the
    sampled agreement); needs no labels."""
    series = []
    for name, res in _runs(runs):
        key = "exact_consistency" if res.per_image.get("exact_consistency") else "sampled_agreement"
        kept = [v for v in res.per_image.get(key, []) if v is not None]
        if kept:
            series.append((name, np.asarray(kept, dtype=float), key))
    if not series:
        return None
    fig, axes = _figure(CONSISTENCY_SIZE)
    ax = axes[0, 0]
    bins = np.linspace(0.0, 1.0, 21)
    for i, (name, values, _) in enumerate(series):
        counts, _ = np.histogram(np.clip(values, 0.0, 1.0), bins=bins)
        share = 100 * counts / max(1, values.size)
        ax.stairs(
            share,
            bins,
            color=f"C{i % 10}",
            linewidth=1.6,
            fill=len(series) == 1,
            alpha=0.8 if len(series) == 1 else 1.0,
            label=f"{name} (mean {values.mean():.3f}, {int((values < 1).sum())} of {values.size} images below 1)",
        )
    exact = series[0][2] == "exact_consistency"
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel(
        "Per-image consistency ("
        + ("share of shift pairs with the same prediction" if exact else "share of sampled pairs that agree")
        + ")"
    )
    ax.set_ylabel("Share of images [%]")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(title or "Distribution of per-image consistency (1 = the prediction never changes)", fontsize=10)
    return _save(fig, path)


def _shift_mode(result: AuditResult) -> str:
    return str(result.settings.get("shift_mode") or result.settings.get("shifts", {}).get("mode") or "circular")


def _shift_word(result: AuditResult) -> str:
    return {"crop": "crop shift", "subpixel": "sub-pixel shift"}.get(_shift_mode(result), "circular shift")


def _as_shown(img: np.ndarray, dh: float, dw: float, result: AuditResult) -> tuple[np.ndarray, np.ndarray]:
    """The image the model saw at zero shift and at (dh, dw), made the way the run shifted it: a roll (circular), a
    crop of the larger canvas (crop) or a Fourier phase shift (sub-pixel)."""
    mode = _shift_mode(result)
    if mode == "crop":
        h, w = result.data.get("image_size") or img.shape[:2]
        mh, mw = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2  # the canvas margin on each side
        top, left = int(round(mh - dh)), int(round(mw - dw))
        return img[mh : mh + h, mw : mw + w], img[top : top + h, left : left + w]
    if mode == "subpixel":
        import torch

        chw = torch.as_tensor(img if img.ndim == 3 else img[:, :, None]).permute(2, 0, 1)[None].float()
        out = fourier_shift(chw, float(dh), float(dw))[0].permute(1, 2, 0).numpy().clip(0.0, 1.0)
        return img, (out if img.ndim == 3 else out[:, :, 0])
    return img, np.roll(img, (int(dh), int(dw)), axis=(0, 1))


def _flip_curves(ax: Axes, grid: np.ndarray, dh: list[int], dw: list[int], ylabel: str = "P(correct)") -> None:
    if 0 in dh:
        ax.plot(dw, grid[dh.index(0)], color="black", linewidth=1.3, label="horizontal (dh=0)")
    common = [s for s in dw if s in dh]
    if common:
        ax.plot(common, [grid[dh.index(s), dw.index(s)] for s in common], color="C0", linewidth=1.3, label="diagonal (dh=dw)")
    ax.axhline(0.5, color="0.6", linewidth=0.8, linestyle=":")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(True, alpha=0.3)


__all__ = [
    "ACCURACY_MAP_SIZE",
    "ADVERSARIAL_SIZE",
    "DPI",
    "VARIATION_SIZE",
    "figure_pixels",
    "flip_examples_size",
    "plot_accuracy_map",
    "plot_adversarial_curve",
    "plot_flip_examples",
    "plot_variation_distribution",
]


# -- patch --search: agreement against consistency, one point per configuration --------------------------------------
FRONTIER_SIZE = (7.0, 4.6)


@plain_text
def plot_frontier(frontier: dict[str, Any], path: str | Path, title: str | None = None) -> Path:
    """The search's trade-off (``Frontier.to_json()``): zero-shift agreement with the original against consistency,
    every configuration a dot, the frontier joined, the unpatched model and the chosen plan marked, the budget a line."""
    configs = frontier["configurations"]
    agreement = np.array([c["agreement"] for c in configs], dtype=float)
    consistency = np.array([c["consistency"] for c in configs], dtype=float)
    recal = np.array([bool(c["recalibrated"]) for c in configs])
    fig, axes = _figure(FRONTIER_SIZE)
    ax = axes[0, 0]
    ax.scatter(agreement[~recal], consistency[~recal], s=18, color="C0", alpha=0.6, label="plan")
    if recal.any():
        ax.scatter(agreement[recal], consistency[recal], s=18, color="C2", marker="^", alpha=0.6, label="plan + BN re-estimated")
    front = sorted(i for i, c in enumerate(configs) if c["pareto"])
    front.sort(key=lambda i: agreement[i])
    ax.plot(agreement[front], consistency[front], color="C1", linewidth=1.2, label="frontier")
    ax.scatter(agreement[:1], consistency[:1], s=60, facecolors="none", edgecolors="black", label="unpatched")
    chosen = int(frontier["chosen"])
    ax.scatter(agreement[chosen : chosen + 1], consistency[chosen : chosen + 1], s=160, marker="*", color="C3", label="chosen")
    budget = 1.0 - float(frontier["max_agreement_drop"])
    ax.axvline(budget, color="C3", linestyle="--", linewidth=1, label=f"budget: agreement {budget:.3f}")
    ax.set_xlabel("Top-1 agreement with the original at zero shift")
    ax.set_ylabel(f"Consistency ({frontier.get('consistency', '')})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title or f"Patch plans on {frontier['images']} images: what each costs and buys", fontsize=10)
    return _save(fig, path)
