"""Typed report entries: what a metric's ``compute`` returns, the JSON report's entry, and that JSON read back strictly.

An entry type is a frozen dataclass whose fields, in order, are the keys of its JSON object; the annotation of a field
is its JSON type: ``float`` a number (an integer stays an integer), ``int`` an integer, ``str``, ``bool``,
``list[...]``, another entry type, ``dict[str, Any]`` any object, ``Any`` any JSON value, ``X | None`` X or null. A field
declared with :func:`omitted` is left out of the JSON while it is None. :meth:`Entry.to_json` writes the fields (a NaN
or infinite float as null); :meth:`Entry.from_json` reads them back and refuses, in a :class:`ReportError` naming the
JSON path ("metrics.accuracy.none.value is a string, not a number"), anything that is not an object, an empty object,
a missing, unknown or mistyped field, and columns that do not line up (:meth:`Entry.problem`).

Entries also read like the JSON objects they stand for (``entry["value"]``, ``entry.get("n")``, ``entry == {...}``): a
read-only mapping of the keys their JSON has, so code written against the report's dicts keeps working.
"""

from __future__ import annotations

import functools
import json
import math
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from shiftaudit.errors import UsageError

E = TypeVar("E", bound="Entry")


class ReportError(UsageError):
    """A report that cannot be read as written; the message is the problem in a few words, naming the JSON path."""


def omitted() -> Any:
    """A field left out of the JSON while it is None (and that may be absent from it)."""
    return field(default=None, metadata={"omitted": True})


def words(value: Any) -> str:
    """What a JSON value is, in words: "a string", "null", "true/false", ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, Mapping):
        return "an object"
    return {int: "a number", float: "a number", str: "a string", list: "a list"}.get(type(value), type(value).__name__)


def join(path: str, key: Any) -> str:
    """``path.key``; a key that is not a plain name is quoted as JSON (one line, at most 40 characters)."""
    text = key if isinstance(key, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) else json.dumps(str(key))
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{path}.{text}" if path else text


_KINDS: dict[Any, tuple[Callable[[Any], bool], str]] = {  # JSON type: (test, name in messages)
    float: (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    str: (lambda v: isinstance(v, str), "a string"),
    bool: (lambda v: isinstance(v, bool), "true/false"),
    dict: (lambda v: isinstance(v, dict), "an object"),
    list: (lambda v: isinstance(v, list), "a list"),
}
Reader = Callable[[Any, str], Any]


def _split(hint: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); X -> (X, False)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return hint, False


@functools.cache
def reader(hint: Any) -> Reader:
    """``read(value, path)`` for the type ``hint`` (see the module doc): the value typed (an entry for an entry type,
    else the value itself), or a :class:`ReportError` naming ``path``."""
    if hint is Any:
        return lambda v, path: v
    inner, nullable = _split(hint)
    origin = typing.get_origin(inner) or inner
    entry = isinstance(origin, type) and issubclass(origin, Entry)
    ok, want = _KINDS[dict] if entry else _KINDS[origin]
    want += " or null" if nullable else ""
    item, item_nullable = _split(typing.get_args(inner)[0]) if origin is list else (None, False)
    read_item = reader(typing.get_args(inner)[0]) if origin is list else None
    scalar = _KINDS[item][0] if item in (float, int, str, bool) else None  # a column of numbers: no call per item

    def read(v: Any, path: str) -> Any:
        if v is None and nullable:
            return None
        if entry and isinstance(v, (dict, Entry)):
            return origin.from_json(v, path)
        if not ok(v):
            raise ReportError(f"{path or 'the report'} is {words(v)}, not {want}")
        if read_item is None or (scalar and all(x is None and item_nullable or scalar(x) for x in v)):
            return v
        return [read_item(x, f"{path}[{i}]") for i, x in enumerate(v)]

    return read


@functools.cache
def _spec(cls: type) -> tuple[tuple[str, Reader, bool], ...]:
    """(name, reader, omitted) of each field of an entry type, in JSON order; an omitted field is not read as null
    (it is not written as null either)."""
    hints = typing.get_type_hints(cls)
    omits = {f.name: bool(f.metadata.get("omitted")) for f in fields(cls)}
    return tuple((name, reader(_split(hints[name])[0] if omit else hints[name]), omit) for name, omit in omits.items())


def to_json(value: Any) -> Any:
    """A typed value as JSON: entries as objects, NaN and infinities as null."""
    if isinstance(value, Entry):
        return value.to_json()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return value


@dataclass(frozen=True, eq=False)
class Entry(Mapping[str, Any]):
    """Base of the entry types (see the module doc). ``open``: other keys are allowed and left unread (a section
    that shift modes and the engine extend, such as ``settings``); otherwise an unknown key is refused."""

    open: ClassVar[bool] = False

    def to_json(self) -> dict[str, Any]:
        return {name: to_json(getattr(self, name)) for name in self}

    @classmethod
    def from_json(cls: type[E], obj: Any, path: str) -> E:
        if isinstance(obj, cls):
            return obj
        if isinstance(obj, Entry):  # another entry type in memory: read by its keys
            obj = dict(obj)
        if not isinstance(obj, dict):
            raise ReportError(f"{path or 'the report'} is {words(obj)}, not an object")
        if not obj:
            raise ReportError(f"{path or 'the report'} is empty")
        spec = _spec(cls)
        if not cls.open:
            known = {name for name, _, _ in spec}
            unknown = next((k for k in obj if k not in known), None)
            if unknown is not None:
                raise ReportError(f"{join(path, unknown)} is not a field shiftaudit writes")
        values = {}
        for name, read, omit in spec:
            if name in obj:
                values[name] = read(obj[name], join(path, name))
            elif not omit:
                raise ReportError(f"{join(path, name)} is missing")
        entry = cls(**values)
        problem = entry.problem(path)
        if problem:
            raise ReportError(problem)
        return entry

    def problem(self, path: str) -> str | None:
        """What is wrong beyond the types (columns of different lengths, a ragged grid), naming the path; or None."""
        return None

    # -- the read-only mapping of the JSON keys ---------------------------------------------------------------------
    def __iter__(self) -> Iterator[str]:
        return (name for name, _, omit in _spec(type(self)) if not (omit and getattr(self, name) is None))

    def __getitem__(self, key: str) -> Any:
        if key in list(self):
            return getattr(self, key)
        raise KeyError(key)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def columns_problem(path: str, columns: Mapping[str, list[Any]], nonempty: bool = False) -> str | None:
    """ "PATH has columns of different lengths" (or an empty first column when ``nonempty``), or None."""
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        return f"{path} has columns of different lengths ({', '.join(columns)})"
    if nonempty and lengths == {0}:
        return f"{path}.{next(iter(columns))} is empty"
    return None


def grid_problem(path: str, grid: list[list[Any]], rows: int, cols: int) -> str | None:
    if len(grid) != rows or any(len(row) != cols for row in grid):
        return f"{path} is not a dh x dw grid ({rows} x {cols})"
    return None


# -- the entries of the built-in metrics ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Proportion(Entry):
    """A share of images (accuracy, consistency) with its 95 % Wilson interval over ``n`` images."""

    value: float | None
    ci_low: float | None
    ci_high: float | None
    n: int


@dataclass(frozen=True, eq=False)
class Summary(Entry):
    """The mean of per-image values (with its 95 % interval) and their median, over ``n`` images."""

    mean: float | None
    median: float | None
    ci_low: float | None
    ci_high: float | None
    n: int


@dataclass(frozen=True, eq=False)
class PairSummary(Summary):
    """A :class:`Summary` of per-image shares of ``pairs_per_image`` shift pairs (the flip rate)."""

    pairs_per_image: int


@dataclass(frozen=True, eq=False)
class Curve(Entry):
    """A proportion at each radius (the max-shift adversarial accuracy), with its intervals."""

    radius: list[float]
    accuracy: list[float]
    ci_low: list[float | None]
    ci_high: list[float | None]
    n: int

    def problem(self, path: str) -> str | None:
        return columns_problem(path, {k: self[k] for k in ("radius", "accuracy", "ci_low", "ci_high")}, nonempty=True)


@dataclass(frozen=True, eq=False)
class Diagonal(Entry):
    shift: list[float]
    accuracy: list[float | None]

    def problem(self, path: str) -> str | None:
        return columns_problem(path, {"shift": self.shift, "accuracy": self.accuracy})


@dataclass(frozen=True, eq=False)
class Grid(Entry):
    """A value per shift (dh, dw) with its diagonal profile, and the worst and best values (accuracy over shifts)."""

    dh: list[float]
    dw: list[float]
    accuracy: list[list[float | None]]
    diagonal: Diagonal
    min: float | None
    max: float | None
    n: int

    def problem(self, path: str) -> str | None:
        if not self.dh or not self.dw:
            return f"{join(path, 'dh' if not self.dh else 'dw')} is empty"
        return grid_problem(join(path, "accuracy"), self.accuracy, len(self.dh), len(self.dw))


@dataclass(frozen=True, eq=False)
class FlipExample(Entry):
    """An image correct at zero shift and wrong at ``flip_shift``, with P(correct) at each stored shift."""

    image_id: int
    label: int
    first_failure_radius: float
    flip_shift: list[float]
    flip_prediction: int
    p_correct: list[list[float | None]]
    path: str | None = omitted()


@dataclass(frozen=True, eq=False)
class Flips(Entry):
    """``metrics.flip_examples``: a few images that a small shift breaks, over the stored (dh, dw) shifts."""

    limit: int
    dh: list[float]
    dw: list[float]
    examples: list[FlipExample]
    reference: str | None = omitted()

    def problem(self, path: str) -> str | None:
        for i, ex in enumerate(self.examples):
            where = f"{join(path, 'examples')}[{i}]"
            if len(ex.flip_shift) != 2:
                return f"{where}.flip_shift is not a (dh, dw) pair"
            bad = grid_problem(f"{where}.p_correct", ex.p_correct, len(self.dh), len(self.dw))
            if bad:
                return bad
        return None


# -- the sections the engine writes beside the metrics -------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Distances(Entry):
    mean: float | None
    max: float | None
    map: list[list[float | None]]


@dataclass(frozen=True, eq=False)
class Layer(Entry):
    """One measured feature map: where it is, and its equivariance and invariance distances per shift."""

    name: str
    module: str
    where: str
    resolution: list[int]
    channels: int | None
    stride: int
    reference_distance: float | None
    equivariance: Distances
    invariance: Distances
    exact_modulo: int | None


@dataclass(frozen=True, eq=False)
class LayerDistances(Entry):
    """``metrics.layers``: per-layer distances over the (dh, dw) shifts (:class:`~shiftaudit.metrics.layers.FeatureDistance`)."""

    dh: list[float]
    dw: list[float]
    layers: list[Layer]

    def problem(self, path: str) -> str | None:
        for i, layer in enumerate(self.layers):
            where = f"{join(path, 'layers')}[{i}]"
            if len(layer.resolution) != 2:
                return f"{where}.resolution is not a (height, width) pair"
            for kind in ("equivariance", "invariance"):
                bad = grid_problem(f"{where}.{kind}.map", layer[kind].map, len(self.dh), len(self.dw))
                if bad:
                    return bad
        return None


@dataclass(frozen=True, eq=False)
class GateStatistic(Entry):
    """One threshold of a sequential gate: its estimate, confidence sequence, draws and decision."""

    metric: str
    radius: int | None
    estimate: float | None
    ci_low: float | None
    ci_high: float | None
    confidence: float
    draws: int
    decision: str
    exact: bool | None = omitted()  # true when every image's value was known: the full audit's value, decided on it


@dataclass(frozen=True, eq=False)
class SequentialGate(Entry):
    """``metrics.sequential``: what a decided sequential gate measured (the report's only metric then)."""

    decision_error: float
    budget: float
    draws: int
    images_seen: int
    forward_rows: int
    forward_rows_exhaustive: int
    statistics: list[GateStatistic]


SECTIONS: dict[tuple[str, ...], type[Entry]] = {("layers",): LayerDistances, ("sequential",): SequentialGate}
"""Report entries that no metric writes: the per-layer observer's and the sequential gate's."""


def read_raw(value: Any, path: str) -> Any:
    """An entry no registered metric declares a type for (a plug-in's, or an unknown one), kept as its JSON value.
    Tables show one that is an object with a ``value`` as a row of its own, so that value and its interval are
    checked: numbers or null."""
    if isinstance(value, dict) and "value" in value:
        number = reader(float | None)
        for key in ("value", "ci_low", "ci_high"):
            if key in value:
                number(value[key], join(path, key))
    return value
