"""Matplotlib set-up shared by every picture: headless backend, atomic PNG writes, one house style."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

import matplotlib

matplotlib.use("Agg")  # headless: CI and servers have no display

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from shiftaudit.files import atomic_path

# Every PNG shiftaudit draws says so in its Software text chunk: a later run into the same report folder removes only
# the stale pictures that carry it (report/outputs.py), never a file someone else made.
PNG_METADATA = {"Software": "shiftaudit"}

P = ParamSpec("P")
R = TypeVar("R")


def plain_text(draw: Callable[P, R]) -> Callable[P, R]:
    """Draw with matplotlib's mathtext off: a ``$`` in a class, file or run name is a dollar sign, never TeX to parse
    (``cat$x^{$`` failed the whole report). Scoped to the drawing, so a Python user's own settings stay as they were."""

    @functools.wraps(draw)
    def drawing(*args: P.args, **kwargs: P.kwargs) -> R:
        with matplotlib.rc_context({"text.parse_math": False}):
            return draw(*args, **kwargs)

    return drawing


def save_png(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Save ``fig`` as PNG atomically and close it."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight", metadata=PNG_METADATA)
    plt.close(fig)
    return Path(path)
