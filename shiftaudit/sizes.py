"""Conv and pool size arguments (an int, or a 1- or 2-tuple, as torch.nn accepts them) as (height, width) pairs."""

from __future__ import annotations

from typing import Any


def pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    t = tuple(int(x) for x in v)
    return (t[0], t[0]) if len(t) == 1 else (t[0], t[1])
