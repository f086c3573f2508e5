"""Structured final answers: the schema the model is told, and the check its answer must pass.

Kept apart from both the agent (which only holds one) and the loop (which only asks "is this valid,
and if not, why"), so neither needs the other to know what an output type is.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import TypeAdapter, ValidationError

_JSON_FENCE = re.compile(r"^```[a-zA-Z]*\n(.*)\n```$", re.S)


def extract_json(text: str) -> str:
    """The JSON part of a final answer: models like to wrap it in a fenced code block."""
    stripped = text.strip()
    match = _JSON_FENCE.match(stripped)
    return match.group(1) if match else stripped


class OutputSpec:
    """An output type as the run sees it: its JSON schema, a validator, a parser."""

    def __init__(self, output_type: Any) -> None:
        self.adapter: TypeAdapter[Any] = TypeAdapter(output_type)
        self.schema: dict[str, Any] = self.adapter.json_schema()

    def validate(self, text: str) -> str | None:
        """None if `text` is a valid answer, else the validation error to show the model."""
        try:
            self.adapter.validate_json(extract_json(text))
        except ValidationError as exc:
            return str(exc)
        return None

    def parse(self, text: str | None) -> Any:
        """The typed value of a valid answer; None for no answer or an invalid one."""
        if text is None:
            return None
        try:
            return self.adapter.validate_json(extract_json(text))
        except ValidationError:
            return None
