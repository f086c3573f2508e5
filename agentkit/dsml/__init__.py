"""The DSML codec: DeepSeek-V4 chat encoding, strict/tolerant parsing, and streaming parsing.

Everything that reads or writes V4's chat format goes through this package, so the prompt the model
sees and the parser that reads its output share one definition of every special string.
"""

from __future__ import annotations

from .encode import (
    encode_messages,
    render_assistant_prefix,
    render_assistant_turn,
    render_tool_call_block,
    render_tool_results,
    render_tools_section,
    render_user_turn,
)
from .errors import DSMLEncodeError, DSMLParseError
from .parse import parse_completion
from .stream import StreamParser, merge_deltas
from .tokens import (
    ASSISTANT,
    BOS,
    DSML,
    EOS,
    LATEST_REMINDER,
    TASK_TOKENS,
    THINK_END,
    THINK_START,
    TOOL_CALLS_CLOSE,
    TOOL_CALLS_OPEN,
    TOOL_CALLS_START,
    USER,
    ThinkingMode,
)
from .types import (
    AssistantMessage,
    ContentDelta,
    Event,
    ParameterDelta,
    ParseError,
    ParseWarning,
    ReasoningDelta,
    ToolCall,
    ToolCallEnd,
    ToolCallStart,
    ToolCallTorn,
    TornCall,
)

__all__ = [
    "ASSISTANT",
    "BOS",
    "DSML",
    "EOS",
    "LATEST_REMINDER",
    "TASK_TOKENS",
    "THINK_END",
    "THINK_START",
    "TOOL_CALLS_CLOSE",
    "TOOL_CALLS_OPEN",
    "TOOL_CALLS_START",
    "USER",
    "AssistantMessage",
    "ContentDelta",
    "DSMLEncodeError",
    "DSMLParseError",
    "Event",
    "ParameterDelta",
    "ParseError",
    "ParseWarning",
    "ReasoningDelta",
    "StreamParser",
    "ThinkingMode",
    "ToolCall",
    "ToolCallEnd",
    "ToolCallStart",
    "ToolCallTorn",
    "TornCall",
    "encode_messages",
    "merge_deltas",
    "parse_completion",
    "render_assistant_prefix",
    "render_assistant_turn",
    "render_tool_call_block",
    "render_tool_results",
    "render_tools_section",
    "render_user_turn",
]
