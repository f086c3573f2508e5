"""Typed results of parsing: tool calls, the assistant message, and the stream events.

The dict form (`to_openai()`) is the compatibility surface with OpenAI-style message lists and with
DeepSeek's reference parser; the typed form is what the agent loop dispatches on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


def to_json(value: Any) -> str:
    """JSON exactly as DeepSeek's encoder writes it: default separators, non-ASCII kept."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except Exception:
        # The reference retries with ASCII escapes; it only matters for exotic values, and when both
        # fail the caller turns the exception into a typed error.
        return json.dumps(value, ensure_ascii=True)


class ToolCall(BaseModel):
    """One `invoke`: a tool name and its decoded arguments.

    `arguments_json` is the OpenAI `arguments` string. When the call came from the parser it is built
    the way DeepSeek's parser builds it (string values JSON-escaped, other values inserted as written),
    so `to_openai()` is byte-compatible with the reference; otherwise it is `to_json(arguments)`.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    arguments_json: str = ""
    id: str | None = None
    # Parameters the model wrote with string="true" (informational: re-encoding decides by value type,
    # as DeepSeek's encoder does).
    string_params: frozenset[str] = frozenset()
    warnings: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _fill_defaults(self) -> ToolCall:
        if not self.arguments_json:
            object.__setattr__(self, "arguments_json", to_json(self.arguments))
        return self

    def to_openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments_json},
        }
        if self.id is not None:
            out["id"] = self.id
        return out


class TornCall(BaseModel):
    """An `invoke` cut off by the end of the output (tolerant mode): what had arrived, not dispatched."""

    model_config = ConfigDict(frozen=True)

    name: str | None
    arguments: dict[str, Any] = Field(default_factory=dict)
    position: int


class AssistantMessage(BaseModel):
    """A parsed completion. `warnings`/`torn_call` are only ever set by tolerant parsing."""

    model_config = ConfigDict(frozen=True)

    reasoning_content: str = ""
    content: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    torn_call: TornCall | None = None

    def to_openai(self) -> dict[str, Any]:
        """The message as DeepSeek's `parse_message_from_completion_text` returns it."""
        return {
            "role": "assistant",
            "content": self.content,
            "reasoning_content": self.reasoning_content,
            "tool_calls": [c.to_openai() for c in self.tool_calls],
        }


# ---------------------------------------------------------------------------------------------- events
# Plain frozen dataclasses: the stream parser creates many of them, and pydantic validation per delta
# would cost more than the parsing itself.


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ContentDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallStart:
    index: int
    name: str


@dataclass(frozen=True, slots=True)
class ParameterDelta:
    """A piece of one parameter's value, in order; `string` says how the value will be decoded."""

    index: int
    name: str
    string: bool
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallEnd:
    """The call is complete and validated: the agent loop may dispatch it now."""

    index: int
    call: ToolCall


@dataclass(frozen=True, slots=True)
class ToolCallTorn:
    """The output ended inside this call (tolerant mode); it must not be dispatched."""

    index: int
    torn: TornCall


@dataclass(frozen=True, slots=True)
class ParseWarning:
    """Tolerant mode repaired something; `position` is the offset in the whole text. `code` names the
    repair; `policy.changes_meaning(code)` says whether it may pass silently."""

    message: str
    position: int
    code: str = "repair"


@dataclass(frozen=True, slots=True)
class ParseError:
    """The text left the grammar; no further events follow."""

    reason: str
    position: int


Event = (
    ReasoningDelta
    | ContentDelta
    | ToolCallStart
    | ParameterDelta
    | ToolCallEnd
    | ToolCallTorn
    | ParseWarning
    | ParseError
)
