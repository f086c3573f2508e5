"""The special strings of DeepSeek-V4's chat format, in one place for the agent layer.

Every module of the agent layer (encoder, parsers, the loop that appends suffixes) reads them from here, so a
spelling can never drift between the side that writes a prompt and the side that reads a completion. Values
are those of DeepSeek's `encoding/encoding_dsv4.py` (spec §11-§12). The strings that are also added tokens of
the V4 vocabulary are defined in `agentkit.runtime.special_tokens` (the runtime imports nothing from the agent
layer, and its tokenizer needs them) and re-exported here under the same names.
"""

from __future__ import annotations

from typing import Final, Literal

from agentkit.runtime import special_tokens as _added

BOS: Final = _added.BOS
EOS: Final = _added.EOS
THINK_START: Final = _added.THINK_START
THINK_END: Final = _added.THINK_END
DSML: Final = _added.DSML
USER: Final = _added.USER
ASSISTANT: Final = _added.ASSISTANT
LATEST_REMINDER: Final = _added.LATEST_REMINDER
TASK_TOKENS: Final[dict[str, str]] = _added.TASK_TOKENS

TOOL_CALLS_BLOCK: Final = "tool_calls"
TOOL_CALLS_OPEN: Final = f"<{DSML}{TOOL_CALLS_BLOCK}>"
TOOL_CALLS_CLOSE: Final = f"</{DSML}{TOOL_CALLS_BLOCK}>"
# What the strict parser looks for to leave content: the block always follows a blank line.
TOOL_CALLS_START: Final = f"\n\n<{DSML}{TOOL_CALLS_BLOCK}"
INVOKE_OPEN: Final = f"<{DSML}invoke"
INVOKE_CLOSE: Final = f"</{DSML}invoke"
PARAM_OPEN: Final = f"<{DSML}parameter"
PARAM_CLOSE: Final = f"/{DSML}parameter"

TOOL_RESULT_OPEN: Final = "<tool_result>"
TOOL_RESULT_CLOSE: Final = "</tool_result>"

# Strings that may never appear in parsed content or reasoning (DeepSeek's final check).
FORBIDDEN_IN_TEXT: Final = (BOS, EOS, THINK_START, THINK_END, DSML)

ThinkingMode = Literal["chat", "thinking"]
THINKING_MODES: Final = ("chat", "thinking")
REASONING_EFFORTS: Final = (None, "high", "max")

REASONING_EFFORT_MAX: Final = (
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to resolve the "
    "root cause, rigorously stress-testing your logic against all potential paths, edge cases, and "
    "adversarial scenarios.\n"
    "Explicitly write out your entire deliberation process, documenting every intermediate step, "
    "considered alternative, and rejected hypothesis to ensure absolutely no assumption is left "
    "unchecked.\n\n"
)

TOOLS_SECTION_TEMPLATE: Final = (
    "## Tools\n\n"
    "You have access to a set of tools to help answer the user's question. You can invoke tools by "
    'writing a "<{dsml}tool_calls>" block like the following:\n\n'
    "<{dsml}tool_calls>\n"
    '<{dsml}invoke name="$TOOL_NAME">\n'
    '<{dsml}parameter name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE</{dsml}parameter>\n'
    "...\n"
    "</{dsml}invoke>\n"
    '<{dsml}invoke name="$TOOL_NAME2">\n'
    "...\n"
    "</{dsml}invoke>\n"
    "</{dsml}tool_calls>\n\n"
    'String parameters should be specified as is and set `string="true"`. For all other types (numbers, '
    'booleans, arrays, objects), pass the value in JSON format and set `string="false"`.\n\n'
    "If thinking_mode is enabled (triggered by {think_start}), you MUST output your complete reasoning "
    "inside {think_start}...{think_end} BEFORE any tool calls or final response.\n\n"
    "Otherwise, output directly after {think_end} with tool calls or final response.\n\n"
    "### Available Tool Schemas\n\n"
    "{schemas}\n\n"
    "You MUST strictly follow the above defined tool name and parameter schemas to invoke tool calls.\n"
)

RESPONSE_FORMAT_TEMPLATE: Final = (
    "## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n{schema}"
)
