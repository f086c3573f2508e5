"""Pure functions behind the synthetic-episode tools (calculator, unit conversion, word count, dates).

Kept free of the tool framework so the arithmetic can be tested on its own and so the answers the
generator expects are computed by the very code the tools run.
"""

from __future__ import annotations

import ast
import datetime as dt
import operator
from collections.abc import Callable
from fractions import Fraction

_BINOPS: dict[type[ast.operator], Callable[[Fraction, Fraction], Fraction]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


class CalcError(ValueError):
    """An expression the calculator refuses, with the reason in words a model can act on."""


def _eval(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, int | float)
        and not isinstance(node.value, bool)
    ):
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        v = _eval(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Div) and right == 0:
            raise CalcError("division by zero")
        return _BINOPS[type(node.op)](left, right)
    raise CalcError(f"unsupported syntax: {ast.unparse(node) if isinstance(node, ast.expr) else node}")


def format_number(v: Fraction) -> str:
    """Integers print without a decimal point; other values with at most 4 decimals, zeros trimmed."""
    if v.denominator == 1:
        return str(v.numerator)
    text = f"{float(v):.4f}".rstrip("0").rstrip(".")
    return text


def calculate(expression: str) -> str:
    """Evaluate + - * / and parentheses over numbers exactly (rationals), then format the result."""
    if len(expression) > 200:
        raise CalcError("expression longer than 200 characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise CalcError(
            f"cannot parse {expression!r}: use numbers with + - * / and parentheses, e.g. 12 * (3 + 4)"
        ) from None
    return format_number(_eval(tree))


UNIT_FACTORS: dict[tuple[str, str], int] = {
    ("km", "m"): 1000,
    ("m", "cm"): 100,
    ("kg", "g"): 1000,
    ("h", "min"): 60,
    ("min", "s"): 60,
    ("l", "ml"): 1000,
    ("day", "h"): 24,
}


def convert(value: float, from_unit: str, to_unit: str) -> str:
    """Convert between the units in UNIT_FACTORS (either direction); the result formatted like `calculate`."""
    v = Fraction(value)
    if (from_unit, to_unit) in UNIT_FACTORS:
        out = v * UNIT_FACTORS[(from_unit, to_unit)]
    elif (to_unit, from_unit) in UNIT_FACTORS:
        out = v / UNIT_FACTORS[(to_unit, from_unit)]
    else:
        known = sorted({u for pair in UNIT_FACTORS for u in pair})
        raise CalcError(f"cannot convert {from_unit!r} to {to_unit!r}; known units: {', '.join(known)}")
    return f"{format_number(out)} {to_unit}"


def count_words(text: str) -> str:
    return str(len(text.split()))


def days_between(start: str, end: str) -> str:
    """Whole days from `start` to `end` (ISO dates, YYYY-MM-DD); negative when end is earlier."""
    try:
        a = dt.date.fromisoformat(start)
        b = dt.date.fromisoformat(end)
    except ValueError as e:
        raise CalcError(f"dates must be YYYY-MM-DD: {e}") from None
    return str((b - a).days)
