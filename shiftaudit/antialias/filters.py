"""The low-pass blur filters of Zhang's Table 1, by name.

Every filter is 1-D and symmetric; the 2-D blur is the outer product with itself (separable, App. E.2). Weights are
the values printed in Table 1 ("Weights" column), normalised to sum 1 as App. E.1 says. Two entries need a word:

- ``binomial2`` and ``binomial3`` are not rows of Table 1; App. E.1 states they equal Rect-2 and Triangle-3.
- Least Squares-3 is printed ``[1, 1,63, 1]``; a 3-tap symmetric filter with a comma typo, read as ``[1, 1.63, 1]``.

Window and least-squares weights are the rounded values the paper prints (firwin/firls outputs), not recomputed.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass

import torch

from shiftaudit.errors import UsageError

TABLE1 = "Table 1"


@dataclass(frozen=True)
class FilterInfo:
    """One named filter: its printed weights, the normalised ones actually used, and where they come from."""

    name: str
    family: str
    taps: int
    weights: tuple[float, ...]
    normalized: tuple[float, ...]
    source: str

    @property
    def nyquist_gain(self) -> float:
        """|H(pi)| = |sum (-1)^n w_n| of the normalised filter: how much of the highest frequency survives."""
        return abs(math.fsum(w if n % 2 == 0 else -w for n, w in enumerate(self.normalized)))


def _info(name: str, family: str, weights: tuple[float, ...], source: str = TABLE1) -> FilterInfo:
    total = math.fsum(weights)
    return FilterInfo(name, family, len(weights), tuple(float(w) for w in weights), tuple(w / total for w in weights), source)


# Table 1 order (binomial 2-3 slotted before the printed binomial 4-7).
_FILTERS: tuple[FilterInfo, ...] = (
    _info("delta", "delta", (1,)),
    *(_info(f"rect{k}", "rectangle", (1,) * k) for k in range(2, 8)),
    _info("tri3", "triangle", (1, 2, 1)),
    _info("tri5", "triangle", (1, 2, 3, 2, 1)),
    _info("tri7", "triangle", (1, 2, 3, 4, 3, 2, 1)),
    _info("binomial2", "binomial", (1, 1), "App. E.1 (equals Rect-2)"),
    _info("binomial3", "binomial", (1, 2, 1), "App. E.1 (equals Triangle-3)"),
    _info("binomial4", "binomial", (1, 3, 3, 1)),
    _info("binomial5", "binomial", (1, 4, 6, 4, 1)),
    _info("binomial6", "binomial", (1, 5, 10, 10, 5, 1)),
    _info("binomial7", "binomial", (1, 6, 15, 20, 15, 6, 1)),
    _info("window3", "window", (1, 1.57, 1)),
    _info("window6", "window", (-1, 1.67, 5, 5, 1.67, -1)),
    _info("window7", "window", (-1, 0, 3, 4.71, 3, 0, -1)),
    _info("lsq3", "least-squares", (1, 1.63, 1), "Table 1 (printed '1, 1,63, 1', read as 1.63)"),
    _info("lsq7", "least-squares", (-1, 0, 3.80, 6.13, 3.80, 0, -1)),
)
_BY_NAME = {f.name: f for f in _FILTERS}

# Spelling variants of the family part of a name, after lower-casing and dropping spaces, '-' and '_'.
_FAMILY_ALIASES = {
    "rect": "rect",
    "rectangle": "rect",
    "box": "rect",
    "tri": "tri",
    "triangle": "tri",
    "triangular": "tri",
    "tent": "tri",
    "binomial": "binomial",
    "bin": "binomial",
    "binom": "binomial",
    "pascal": "binomial",
    "window": "window",
    "win": "window",
    "firwin": "window",
    "lsq": "lsq",
    "leastsquares": "lsq",
    "leastsquare": "lsq",
    "leastsq": "lsq",
    "ls": "lsq",
    "firls": "lsq",
}
# A 1-tap filter of any family is the identity, so "rect1"/"binomial1" are the delta too.
_DELTA_ALIASES = {"delta", "delta1", "none", "identity", "1", "rect1", "box1", "binomial1", "bin1"}


def list_filters() -> list[FilterInfo]:
    """Every filter, in Table 1 order."""
    return list(_FILTERS)


def filter_names() -> list[str]:
    """Canonical names, in Table 1 order."""
    return [f.name for f in _FILTERS]


def _squash(name: str) -> str:
    return re.sub(r"[\s\-_]+", "", str(name).strip().lower())


def canonical_filter_name(name: str) -> str:
    """Map a user spelling ("Bin-5", "box2", "triangle3", "lsq-7", "none") to its canonical name."""
    if not isinstance(name, str):
        raise UsageError(f"A blur filter name must be a string such as 'binomial5', got {name!r}.")
    key = _squash(name)
    if key in _DELTA_ALIASES:
        return "delta"
    m = re.fullmatch(r"([a-z]+)(\d+)", key)
    if m and m.group(1) in _FAMILY_ALIASES:
        candidate = f"{_FAMILY_ALIASES[m.group(1)]}{int(m.group(2))}"
        if candidate in _BY_NAME:
            return candidate
    close = difflib.get_close_matches(key, filter_names(), n=3, cutoff=0.5)
    if m and not close:  # right family, size not in Table 1: offer that family's sizes
        fam = _FAMILY_ALIASES.get(m.group(1))
        close = [n for n in filter_names() if fam and n.startswith(fam)]
    hint = f"did you mean {' or '.join(close)}?" if close else f"choose one of {', '.join(filter_names())}."
    raise UsageError(f"Unknown blur filter {name!r}; {hint}")


def get_filter_info(name: str) -> FilterInfo:
    """The :class:`FilterInfo` of a filter, by any accepted spelling."""
    return _BY_NAME[canonical_filter_name(name)]


def get_filter(name: str, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """The normalised 1-D filter as a tensor of shape ``(taps,)``."""
    return torch.tensor(get_filter_info(name).normalized, dtype=torch.float64).to(dtype=dtype, device=device)


def filter_2d(name: str, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """The separable 2-D filter ``f f^T`` of shape ``(taps, taps)``, summing to 1 (computed in float64, then cast)."""
    f = torch.tensor(get_filter_info(name).normalized, dtype=torch.float64)
    return torch.outer(f, f).to(dtype=dtype, device=device)
