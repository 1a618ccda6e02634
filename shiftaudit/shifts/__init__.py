"""Which shifts an audit evaluates (``sets``) and how a shift is applied to an image (``modes``: circular, crop,
sub-pixel)."""

from __future__ import annotations

from shiftaudit.shifts import modes as modes  # registers the built-in modes (circular, crop, subpixel) in base's registry
