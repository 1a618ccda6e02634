"""The per-layer shift-equivariance heatmap grid (the paper's Fig. 4).

One panel per layer over (dh, dw), zero shift at the centre, the layer's resolution in its title. Every panel is
drawn relative to its own layer's reference distance (the mean cosine distance between two different images), on a
colour scale shared by all panels: blue is distance 0 (exact equivariance), red is half the reference, as in the paper.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from shiftaudit.errors import one_line
from shiftaudit.metrics.layers import colour_scale
from shiftaudit.report.plotting import plain_text, plt, save_png


def _grid(layer: dict[str, Any], kind: str) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in layer[kind]["map"]], dtype=float)


@plain_text
def plot_layer_heatmaps(layers: dict[str, Any], path: str | Path, kind: str = "equivariance", title: str | None = None) -> Path:
    entries = layers["layers"]
    dh, dw = layers["dh"], layers["dw"]
    n = len(entries)
    cols = min(6, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(2.0 * cols + 0.8, 2.1 * rows + 0.5), dpi=100, squeeze=False, layout="constrained"
    )
    cmap = plt.get_cmap("turbo")
    image = None
    extent = (dw[0] - 0.5, dw[-1] + 0.5, dh[-1] + 0.5, dh[0] - 0.5)
    for ax, layer in zip(axes.flat, entries):
        scale = colour_scale(layer.get("reference_distance")) or 1.0  # the table's unit too
        rel = _grid(layer, kind) / scale
        image = ax.imshow(rel, cmap=cmap, vmin=0.0, vmax=1.0, extent=extent, interpolation="nearest")
        h, w = layer["resolution"]
        name = one_line(layer["name"])
        ax.set_title(f"{name} [{h}x{w}]" if h != w else f"{name} [{h}]", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    label = "shift-equivariance" if kind == "equivariance" else "shift-invariance"
    fig.suptitle(title or f"Distance from {label} per layer over shifts (dh, dw), zero shift at the centre", fontsize=9)
    if image is not None:
        cbar = fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.7)
        cbar.set_label("distance / half the distance between two images", fontsize=7)
    return save_png(fig, path)


__all__ = ["plot_layer_heatmaps"]
