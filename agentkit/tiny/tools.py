"""The tools synthetic episodes use: four small deterministic ones defined here plus the built-ins.

The same `Tool` objects serve the generator (which executes them to write each tool result), the
evaluation loop (which lets the trained model call them) and `agentkit demo` / `agentkit run`, so the text
a model saw in training is the text the real loop hands it. They live outside `agentkit.train` because
they are runtime tools: the CLI offers them without importing any training code.
"""

from __future__ import annotations

from typing import Any

from agentkit.tiny import calc
from agentkit.tools.tool import Tool, ToolError, tool


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly.

    Args:
        expression: numbers with + - * / and parentheses, e.g. 12 * (3 + 4)
    """
    try:
        return calc.calculate(expression)
    except calc.CalcError as e:
        raise ToolError(f"calculator error: {e}") from None


@tool
def convert_units(value: float, from_unit: str, to_unit: str) -> str:
    """Convert a quantity between units of length, mass, volume or time.

    Args:
        value: the amount to convert
        from_unit: one of km, m, cm, kg, g, l, ml, day, h, min, s
        to_unit: the unit wanted, same list
    """
    try:
        return calc.convert(value, from_unit, to_unit)
    except calc.CalcError as e:
        raise ToolError(f"convert_units error: {e}") from None


@tool
def count_words(text: str) -> str:
    """Count the words (whitespace-separated) in a text.

    Args:
        text: the text to count
    """
    return calc.count_words(text)


@tool
def days_between(start: str, end: str) -> str:
    """Count the days from one date to another.

    Args:
        start: first date, YYYY-MM-DD
        end: second date, YYYY-MM-DD
    """
    try:
        return calc.days_between(start, end)
    except calc.CalcError as e:
        raise ToolError(f"days_between error: {e}") from None


EPISODE_TOOLS: dict[str, Tool] = {t.name: t for t in (calculator, convert_units, count_words, days_between)}


def all_tools() -> dict[str, Tool]:
    """The episode tools plus the sandbox built-ins (shell, python, read_file, list_dir, grep, ...)."""
    from agentkit.tools import builtin

    out: dict[str, Tool] = dict(EPISODE_TOOLS)
    for name in ("shell", "python", "read_file", "write_file", "list_dir", "grep"):
        t: Any = getattr(builtin, name, None)
        if not isinstance(t, Tool):
            raise ImportError(f"agentkit.tools.builtin has no tool named {name!r}")
        out[t.name] = t
    return out
