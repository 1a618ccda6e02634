"""Library errors name the Python parameter in backticks (`max_shift`); the command line names its flag (--max-shift).
This table is the one place that maps one to the other: :func:`as_flags` rewrites an error before the CLI prints it."""

from __future__ import annotations

import re

FLAGS = {
    "backend": "--backend",
    "batch_size": "--batch-size",
    "compile": "--compile",
    "decision_error": "--decision-error",
    "device": "--device",
    "layers": "--layers",
    "max_shift": "--max-shift",
    "mode": "--mode",
    "num_workers": "--workers",
    "pairs": "--pairs",
    "precision": "--precision",
    "resume": "--resume",
    "shift_mode": "--shift-mode",
    "shift_step": "--shift-step",
    "threads": "--threads",
}

_PARAMETER = re.compile(r"`([a-z_]+)`")


def as_flags(message: str) -> str:
    """``message`` with every parameter the table knows, written `name`, replaced by its flag."""
    return _PARAMETER.sub(lambda m: FLAGS.get(m.group(1), m.group(0)), message)
