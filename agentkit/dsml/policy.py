"""What the tolerant parser may repair silently, and what must go back to the model.

Real V4 output is not always canonical DSML, and the tolerant parser repairs what it can. Some repairs
keep the meaning of what the model wrote: a delimiter spelled another way, whitespace between tags, a
missing wrapper or closing tag, a value wrapped in CDATA, a JSON object written as an invoke's body.
Those stay silent (logged, never shown as warnings). Others would change what a call means or lose
part of it: a parameter given twice (which value did the model mean?), a value declared as JSON that
is not JSON (re-typing it guesses), a call written inside the reasoning (the model had not finished
thinking), text or an unknown tag inside the block (perhaps a misspelt invoke), a block with no call
at all. Those are never run or accepted as they are: the call gets a result that says what was wrong,
or the turn gets a correction note, the user gets a warning event, and the turn counts against the
run's retry budget (`Limits.output_retries`).

A call is dispatched only if its name is a valid tool-name token and its arguments are what the model
wrote. Every parser warning carries a `code`; this module is the one place that decides what a code
means, and the loop enforces it in one place (`backends.assembly` per call, `loop.decide` per turn).
"""

from __future__ import annotations

import re

#: Repairs that change or lose what the model wrote (ParseWarning.code values).
CHANGES_MEANING = frozenset(
    {
        "duplicate_parameter",  # the later value would silently win
        "invalid_json",  # string="false" but not JSON: the value would be re-typed as text
        "call_in_reasoning",  # a tool-call block before </think>
        "no_name",  # an invoke without a name
        "lost_text",  # text inside the block that is not a call (the call it meant is lost)
        "unknown_tag",  # an unknown DSML tag in the block (e.g. a misspelt <invoke>)
        "empty_block",  # a tool-call block with no invoke in it
    }
)

_TOOL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,127}")


def valid_tool_name(name: str) -> bool:
    """A tool name as tool APIs and MCP spell them: letters, digits, `_ . : -`, at most 128 characters."""
    return _TOOL_NAME.fullmatch(name) is not None


def changes_meaning(code: str) -> bool:
    return code in CHANGES_MEANING


def refusal(name: str, issues: list[str], in_reasoning: bool) -> str | None:
    """Why a parsed call must not run (None: dispatch it). `issues`: meaning-changing warnings
    that occurred while the call was written."""
    if in_reasoning:
        return (
            "the call was written inside the reasoning, before </think>; close the reasoning with "
            "</think> first, then write the tool call block"
        )
    if issues:
        return "; ".join(issues)
    if not valid_tool_name(name):
        return f"{name!r} is not a tool name"
    return None
