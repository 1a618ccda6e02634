"""``shiftaudit filters``: the low-pass filters of the paper's Table 1, with their weights."""

from __future__ import annotations

from rich.table import Table

from shiftaudit.antialias.filters import list_filters
from shiftaudit.cli import app
from shiftaudit.cli.common import console, handle_errors


@app.command("filters")
@handle_errors
def filters_command() -> None:
    """List every blur filter by name, with its Table 1 weights and the normalised ones actually used."""
    t = Table(
        title="Blur filters (Zhang, Table 1); 2-D filter = outer product", title_justify="left", show_edge=False, pad_edge=False
    )
    for col in ("Name", "Family", "Taps", "Weights", "Normalised", "Nyquist gain"):
        t.add_column(col)
    for f in list_filters():
        raw = ", ".join(f"{w:g}" for w in f.weights)
        norm = ", ".join(f"{w:.4f}" for w in f.normalized)
        t.add_row(f.name, f.family, str(f.taps), f"[{raw}]", f"[{norm}]", f"{f.nyquist_gain:.3f}")
    console.print(t)
