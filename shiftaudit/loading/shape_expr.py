"""Shape expressions of a torch.export archive, checked against a small grammar before sympy evaluates them.

torch parses each ``expr_str`` of an archive with ``sympy.sympify``, which is Python's ``eval`` with sympy's names in
scope: ``__import__('os')`` would run, and so would ``9**9**9`` or ``factorial(10**8)``, which never finish. Only
what torch writes is accepted: size symbols (``Symbol('s0', positive=True, integer=True)`` or ``s0``), integer
literals of at most :data:`MAX_DIGITS` digits, ``+ - * / // %`` and comparisons, sympy's arithmetic constructors
and torch's integer helpers (``Add``, ``Mul``, ``FloorDiv``, ``Max`` ...), with every power a small integer exponent.
The grammar bounds the work too: at most :data:`MAX_TOKENS` tokens, :data:`MAX_DEPTH` levels of nesting and
:data:`MAX_POWERS` powers, so the largest number sympy can build has about ``MAX_DIGITS * MAX_EXPONENT **
MAX_POWERS`` digits and the slowest accepted expression is evaluated in milliseconds.
"""

from __future__ import annotations

import re

MAX_CHARS = 8_192
MAX_TOKENS = 4_096
MAX_DEPTH = 48
MAX_DIGITS = 20
MAX_EXPONENT = 8
MAX_POWERS = 2
MAX_ARGS = 16  # arguments of one Add or Mul (torch writes a few)
MAX_CHOICES = 2  # Max/Min calls in one expression, and their arguments: sympy compares every pair, slowly

_TOKEN = re.compile(r"\s*(?:(?P<num>\d+)|(?P<name>[A-Za-z_]\w*)|(?P<str>'[^'\\]*')|(?P<op>\*\*|//|==|!=|<=|>=|[-+*/%(),=<>]))")
_SYMBOL_NAME = re.compile(r"[a-z]{1,3}\d{1,7}")  # s0, u3, zf12: torch's size, unbacked and float symbols
_ASSUMPTIONS = {"positive", "negative", "integer", "real", "nonnegative", "nonpositive", "finite", "zero", "nonzero"}
_CONSTANTS = {"True", "False", "oo"}
# name -> (fewest, most) arguments
_CALLS = {
    **dict.fromkeys(("Add", "Mul", "And", "Or"), (1, MAX_ARGS)),
    **dict.fromkeys(("Max", "Min"), (1, MAX_CHOICES)),
    **dict.fromkeys(
        (
            "FloorDiv",
            "CeilDiv",
            "CleanDiv",
            "Mod",
            "PythonMod",
            "IntTrueDiv",
            "FloatTrueDiv",
            "Eq",
            "Ne",
            "Ge",
            "Gt",
            "Le",
            "Lt",
            "Equality",
            "Unequality",
            "GreaterThan",
            "LessThan",
            "StrictGreaterThan",
            "StrictLessThan",
            "Rational",
            "LShift",
            "RShift",
        ),
        (2, 2),
    ),
    **dict.fromkeys(("ModularIndexing", "Where"), (3, 3)),
    **dict.fromkeys(("Not", "FloorToInt", "CeilToInt", "TruncToInt", "ToFloat", "floor", "ceiling"), (1, 1)),
}
_POWERS = {"Pow", "PowByNatural"}


class _Reject(Exception):
    """Not what torch writes: a name or construct sympy's ``eval`` could run as code."""


class TooCostly(_Reject):
    """Within the grammar's names but beyond its bounds: sympy would compute for too long or build too much."""


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None:
                if not text[pos:].strip():
                    break
                raise _Reject(f"an unexpected character {text[pos]!r}")
            kind = m.lastgroup or ""
            self.tokens.append((kind, m.group(kind)))
            if len(self.tokens) > MAX_TOKENS:
                raise TooCostly(f"more than {MAX_TOKENS} tokens")
            pos = m.end()
        self.pos = 0
        self.depth = 0
        self.powers = 0
        self.choices = 0

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else ("end", "")

    def take(self, value: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if token[0] == "end" or (value is not None and token[1] != value):
            raise _Reject(f"{value or 'more'} expected")
        self.pos += 1
        return token

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise TooCostly(f"nesting deeper than {MAX_DEPTH}")

    # expr := arith (comparison arith)?
    def expr(self) -> None:
        self.enter()
        self.arith()
        if self.peek()[1] in ("==", "!=", "<", "<=", ">", ">="):
            self.take()
            self.arith()
        self.depth -= 1

    def arith(self) -> None:
        self.term()
        while self.peek()[1] in ("+", "-"):
            self.take()
            self.term()

    def term(self) -> None:
        self.unary()
        while self.peek()[1] in ("*", "/", "//", "%"):
            self.take()
            self.unary()

    def unary(self) -> None:
        if self.peek()[1] in ("+", "-"):
            self.take()
            self.enter()
            self.unary()
            self.depth -= 1
            return
        self.atom()
        if self.peek()[1] == "**":
            self.take()
            self.exponent()

    def exponent(self) -> None:
        """A power's exponent: a small integer literal, nothing that could itself be large."""
        self.powers += 1
        if self.powers > MAX_POWERS:
            raise TooCostly(f"more than {MAX_POWERS} powers")
        negative = self.peek()[1] == "-"
        if negative:
            self.take()
        kind, value = self.take()
        if kind == "name" and value == "Integer":
            self.take("(")
            if self.peek()[1] == "-":
                self.take()
            kind, value = self.take()
            self.take(")")
        if kind != "num" or int(value) > MAX_EXPONENT:
            raise TooCostly(f"a power whose exponent is not an integer of at most {MAX_EXPONENT}")

    def atom(self) -> None:
        kind, value = self.take()
        if kind == "num":
            if len(value) > MAX_DIGITS:
                raise TooCostly(f"a number of more than {MAX_DIGITS} digits")
        elif kind == "name":
            if self.peek()[1] == "(":
                self.call(value)
            elif not (_SYMBOL_NAME.fullmatch(value) or value in _CONSTANTS):
                raise _Reject(f"the name {value[:40]!r}")
        elif value == "(":
            self.expr()
            self.take(")")
        else:
            raise _Reject(f"{value!r} where a value is expected")

    def call(self, name: str) -> None:
        self.take("(")
        self.enter()
        if name == "Symbol":
            self.symbol()
        elif name in _POWERS:
            self.expr()
            self.take(",")
            self.exponent()
        elif name == "Integer":
            if self.peek()[1] == "-":
                self.take()
            kind, value = self.take()
            if kind != "num" or len(value) > MAX_DIGITS:
                raise TooCostly(f"an Integer that is not a literal of at most {MAX_DIGITS} digits")
        elif name in _CALLS:
            if name in ("Max", "Min"):
                self.choices += 1
                if self.choices > MAX_CHOICES:
                    raise TooCostly(f"more than {MAX_CHOICES} Max/Min")
            fewest, most = _CALLS[name]
            count = 0
            while True:
                self.expr()
                count += 1
                if self.peek()[1] != ",":
                    break
                self.take(",")
            if count > most:
                raise TooCostly(f"{name} with {count} arguments")
            if count < fewest:
                raise _Reject(f"{name} with {count} arguments")
        else:
            raise _Reject(f"a call to {name[:40]!r}")
        self.take(")")
        self.depth -= 1

    def symbol(self) -> None:
        kind, value = self.take()
        if kind != "str" or not _SYMBOL_NAME.fullmatch(value[1:-1]):
            raise _Reject("a Symbol that is not a size symbol")
        while self.peek()[1] == ",":
            self.take(",")
            kind, key = self.take()
            self.take("=")
            _, flag = self.take()
            if key not in _ASSUMPTIONS or flag not in ("True", "False"):
                raise _Reject(f"the Symbol option {key[:40]!r}")


class ExpressionBudget:
    """Checks each shape expression of one archive, and bounds their total: torch parses every occurrence again."""

    max_total_chars = 2_000_000  # about 15 times a resnet50 exported with dynamic batch, height and width
    max_total_choices = 16  # Max/Min over the archive (torch's own graphs of common models have none)

    def __init__(self) -> None:
        self.chars = 0
        self.choices = 0

    def unsafe_reason(self, text: str) -> str | None:
        """Why sympy must not see ``text`` as code (a name or construct outside the grammar), in a few words, or None.
        Raises :class:`TooCostly` for an expression of the grammar beyond its bounds: no trust makes that one safe."""
        if len(text) > MAX_CHARS:
            raise TooCostly(f"longer than {MAX_CHARS:,} characters")
        self.chars += len(text)
        if self.chars > self.max_total_chars:
            raise TooCostly(f"shape expressions longer than {self.max_total_chars:,} characters in all")
        try:
            parser = _Parser(text)
            parser.expr()
            if parser.peek()[0] != "end":
                raise _Reject(f"{parser.peek()[1]!r} after the expression")
        except TooCostly:
            raise
        except _Reject as exc:
            return str(exc)
        self.choices += parser.choices
        if self.choices > self.max_total_choices:
            raise TooCostly(f"more than {self.max_total_choices} Max/Min in all")
        return None


def unsafe_reason(text: str) -> str | None:
    """Why sympy must not see this one expression, or None (bounds beyond the grammar's give a reason too)."""
    try:
        return ExpressionBudget().unsafe_reason(text)
    except TooCostly as exc:
        return str(exc)
