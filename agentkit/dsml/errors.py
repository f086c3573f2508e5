"""Typed errors of the DSML codec.

Both derive from ValueError so callers that already guard malformed model output with `except
ValueError` (the shape of DeepSeek's reference, which raises ValueError/AssertionError) keep working.
"""

from __future__ import annotations


class DSMLEncodeError(ValueError):
    """A message list the V4 chat format cannot express (DeepSeek's encoder would raise too)."""


class DSMLParseError(ValueError):
    """Model output that does not follow the grammar; `position` is the offset in the parsed text."""

    def __init__(self, reason: str, position: int) -> None:
        super().__init__(f"{reason} (at offset {position})")
        self.reason = reason
        self.position = position

    def __reduce__(self) -> tuple[type[DSMLParseError], tuple[str, int]]:
        return (type(self), (self.reason, self.position))
