"""Stream events of an agent run.

Every backend (scripted, raw completions, chat API, embedded runtime) produces exactly these objects, so a
UI written against one backend works unchanged against the others. Events are small frozen dataclasses
with a `kind` tag, cheap enough to create per token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from agentkit.limits import Usage
from agentkit.messages import ToolCall


@dataclass(frozen=True, slots=True)
class StepStart:
    step: int
    kind: Literal["step_start"] = "step_start"


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    step: int
    text: str
    kind: Literal["reasoning_delta"] = "reasoning_delta"


@dataclass(frozen=True, slots=True)
class TextDelta:
    step: int
    text: str
    kind: Literal["text_delta"] = "text_delta"


@dataclass(frozen=True, slots=True)
class ToolCallStart:
    step: int
    index: int
    call_id: str
    name: str
    kind: Literal["tool_call_start"] = "tool_call_start"


@dataclass(frozen=True, slots=True)
class ToolCallArgDelta:
    """A piece of one argument's raw text; `param` is None when the backend streams a JSON blob."""

    step: int
    index: int
    param: str | None
    text: str
    kind: Literal["tool_call_arg_delta"] = "tool_call_arg_delta"


@dataclass(frozen=True, slots=True)
class ToolCallEnd:
    """The call is complete; it is dispatched right after this event, before the model's turn ends."""

    step: int
    index: int
    call: ToolCall
    kind: Literal["tool_call_end"] = "tool_call_end"


@dataclass(frozen=True, slots=True)
class ToolResult:
    step: int
    index: int
    call_id: str
    name: str
    content: str
    is_error: bool
    error_kind: str | None = None
    kind: Literal["tool_result"] = "tool_result"


@dataclass(frozen=True, slots=True)
class ApprovalRequired:
    step: int
    call: ToolCall
    kind: Literal["approval_required"] = "approval_required"


@dataclass(frozen=True, slots=True)
class UsageUpdate:
    step: int
    usage: Usage
    kind: Literal["usage"] = "usage"


@dataclass(frozen=True, slots=True)
class StepEnd:
    step: int
    finish_reason: str
    kind: Literal["step_end"] = "step_end"


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """Something the run recovered from (malformed output, validation failure, limit); never fatal."""

    step: int
    error_kind: str
    message: str
    kind: Literal["error"] = "error"


@dataclass(frozen=True, slots=True)
class SubAgentEvent:
    """An event of a sub-agent's run (`Agent.as_tool`), passed up through the call that started it.

    `call_id` is the parent's tool call; `agent` the sub-agent tool's name; `event` the child's own event
    (its `RunEnd.result` carries the child's `RunResult`, usage included). Nested sub-agents nest.
    """

    step: int
    call_id: str
    agent: str
    event: Event
    kind: Literal["subagent"] = "subagent"


@dataclass(frozen=True, slots=True)
class RunEnd:
    status: str
    output: str | None
    result: Any = None  # the RunResult, so a stream consumer needs no second call
    kind: Literal["run_end"] = "run_end"


Event = (
    StepStart
    | ReasoningDelta
    | TextDelta
    | ToolCallStart
    | ToolCallArgDelta
    | ToolCallEnd
    | ToolResult
    | ApprovalRequired
    | UsageUpdate
    | StepEnd
    | ErrorEvent
    | SubAgentEvent
    | RunEnd
)

__all__ = [
    "ApprovalRequired",
    "ErrorEvent",
    "Event",
    "ReasoningDelta",
    "RunEnd",
    "StepEnd",
    "StepStart",
    "SubAgentEvent",
    "TextDelta",
    "ToolCallArgDelta",
    "ToolCallEnd",
    "ToolCallStart",
    "ToolResult",
    "UsageUpdate",
]
