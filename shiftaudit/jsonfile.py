"""Parsing JSON a user points at (reports to compare, class maps) without trusting it.

The file is read with :func:`shiftaudit.files.read_regular` (never a FIFO or device, at most a size limit).
``load_json`` refuses what Python's parser accepts but JSON does not (``NaN``, ``Infinity``, numbers beyond a double
such as ``1e400``) and nesting deeper than any file we read needs.
"""

from __future__ import annotations

import json
from typing import Any

from shiftaudit.errors import UsageError

MAX_DEPTH = 64  # a report nests about 6 levels deep; a class map 2


class JsonInputError(UsageError):
    """The file is not JSON we can use; the message says why in a few words (the caller names the file)."""


def _no_constant(name: str) -> Any:
    raise JsonInputError(f"it holds {name}, which is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise JsonInputError(f"it holds the number {text[:40]}, too large for a double")
    return value


def _depth(obj: Any) -> int:
    """Nesting depth, without recursion (a hostile file must not exhaust the stack here either)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        if d > MAX_DEPTH:
            return d
        if isinstance(node, dict):
            stack.extend((v, d + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, d + 1) for v in node)
    return deepest


def load_json(data: bytes) -> Any:
    """Parse strict JSON; raises :class:`JsonInputError` whose message says in a few words what is wrong."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise JsonInputError("it is not UTF-8 text") from None
    try:
        obj = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise JsonInputError("it is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise JsonInputError(f"it is not JSON: {exc.msg[:1].lower()}{exc.msg[1:]} at line {exc.lineno}") from None
    except ValueError as exc:  # int() of a number with more than 4300 digits
        raise JsonInputError(f"it holds a number that cannot be read ({str(exc)[:80]})") from None
    if _depth(obj) > MAX_DEPTH:
        raise JsonInputError(f"it is nested more than {MAX_DEPTH} levels deep")
    return obj
