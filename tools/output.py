"""Turning a tool's return value into the text the model reads, within a character budget."""

from __future__ import annotations

import base64
from typing import Any

import pydantic_core
from agentkit.tools.context import MIN_OUTPUT_CHARS
from pydantic import BaseModel

__all__ = ["render_output", "truncate_middle"]


def truncate_middle(text: str, budget: int) -> tuple[str, bool]:
    """Fit `text` into `budget` characters, keeping its head and tail and saying what was cut.

    Head and tail both matter for tool output: a command's first lines say what it did, its last
    lines carry the error. The note is counted inside the budget, so the result never exceeds it.
    """
    if budget < MIN_OUTPUT_CHARS:
        raise ValueError(f"output budget must be at least {MIN_OUTPUT_CHARS} characters, got {budget}")
    total = len(text)
    if total <= budget:
        return text, False
    longest_note = _truncation_note(total, total)
    keep = budget - len(longest_note)
    head = (keep + 1) // 2
    tail = keep - head
    dropped = total - head - tail
    out = text[:head] + _truncation_note(dropped, total) + (text[total - tail :] if tail else "")
    return out, True


def _truncation_note(dropped: int, total: int) -> str:
    return f"\n[... {dropped} of {total} characters truncated ...]\n"


def render_output(value: Any) -> str:
    """Turn whatever a tool returned into the text the model reads."""
    if isinstance(value, str):
        return value
    if value is None:
        return "(no output)"
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return f"<binary data, {len(raw)} bytes, base64>\n" + base64.b64encode(raw).decode("ascii")
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    return pydantic_core.to_json(value, fallback=str).decode("utf-8")
