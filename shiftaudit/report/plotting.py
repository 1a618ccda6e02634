"""Matplotlib set-up shared by every picture: headless backend, atomic PNG writes, one house style."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: CI and servers have no display

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from shiftaudit.files import atomic_path  # noqa: E402

# Every PNG shiftaudit draws says so in its Software text chunk: a later run into the same report folder removes only
# the stale pictures that carry it (report/outputs.py), never a file someone else made.
PNG_METADATA = {"Software": "shiftaudit"}


def save_png(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Save ``fig`` as PNG atomically and close it."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight", metadata=PNG_METADATA)
    plt.close(fig)
    return Path(path)
