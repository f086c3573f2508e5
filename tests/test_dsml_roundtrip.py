"""Round trips: random agent conversations -> encode -> each assistant span -> parse -> the same turn.

Also pins the render helpers to encode_messages: with tools present the prompt is append-only, and each
suffix the agent loop appends (assistant turn, tool results + assistant prefix) is exactly what
encode_messages renders for the longer conversation.
"""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from lxml import etree
from test_dsml_strategies import agent_conversations, assistant_turns, expected_calls

from agentkit.dsml import (
    ASSISTANT,
    THINK_START,
    TOOL_CALLS_CLOSE,
    TOOL_CALLS_OPEN,
    USER,
    StreamParser,
    encode_messages,
    parse_completion,
    render_assistant_prefix,
    render_assistant_turn,
    render_tool_results,
)

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)
MARKER = ASSISTANT + THINK_START


def _spans(prompt: str) -> list[str]:
    spans = []
    at = prompt.find(MARKER)
    while at != -1:
        start = at + len(MARKER)
        end = prompt.find(USER, start)
        spans.append(prompt[start : end if end != -1 else len(prompt)])
        at = prompt.find(MARKER, start)
    return spans


def _summary(msg: Any) -> tuple[str, str, list[tuple[str, dict[str, Any]]]]:
    return msg.reasoning_content, msg.content, [(c.name, c.arguments) for c in msg.tool_calls]


@SETTINGS
@given(agent_conversations())
def test_encode_then_parse_returns_every_turn(conv: list[dict[str, Any]]) -> None:
    prompt = encode_messages(conv, "thinking")
    turns = [m for m in conv if m["role"] == "assistant"]
    spans = _spans(prompt)
    assert len(spans) == len(turns)
    for span, turn in zip(spans, turns, strict=True):
        want = (turn["reasoning_content"], turn["content"], expected_calls(turn))
        strict = parse_completion(span, "thinking")
        assert _summary(strict) == want
        tolerant = parse_completion(span, "thinking", strict=False)
        assert _summary(tolerant) == want
        assert tolerant.warnings == [] and tolerant.torn_call is None
        # The OpenAI export is what DeepSeek's parser returns: arguments decode to the same dict.
        assert [c["function"]["name"] for c in strict.to_openai()["tool_calls"]] == [n for n, _ in want[2]]
        stream = StreamParser("thinking", strict=True)
        stream.feed(span)
        stream.close()
        assert _summary(stream.result()) == want


@SETTINGS
@given(agent_conversations())
def test_render_helpers_append_exactly_what_encode_renders(conv: list[dict[str, Any]]) -> None:
    # Walk the conversation as an agent loop would, appending suffixes to the first prompt.
    first_assistant = next(i for i, m in enumerate(conv) if m["role"] == "assistant")
    transcript = encode_messages(conv[:first_assistant], "thinking")
    assert transcript.endswith(render_assistant_prefix("thinking"))
    i = first_assistant
    while i < len(conv):
        msg = conv[i]
        if msg["role"] == "assistant":
            transcript += render_assistant_turn(msg, "thinking")
            i += 1
            continue
        j = i
        while j < len(conv) and conv[j]["role"] in ("tool", "user"):
            j += 1
        group = conv[i:j]
        if all(m["role"] == "tool" for m in group):
            by_id = {m["tool_call_id"]: m["content"] for m in group}
            calls = conv[i - 1]["tool_calls"]
            transcript += render_tool_results(by_id[c["id"]] for c in calls)
        else:
            transcript += USER + "\n\n".join(m["content"] for m in group)
        transcript += render_assistant_prefix("thinking")
        i = j
        assert transcript == encode_messages(conv[:i], "thinking")
    assert transcript == encode_messages(conv, "thinking")


_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff\r]")


def _as_xml(block: str) -> str:
    """A canonical DSML block rewritten as XML with CDATA values, by plain string replacement."""
    D = "｜DSML｜"
    out = block.replace('string="true">', 'string="true"><![CDATA[').replace(
        'string="false">', 'string="false"><![CDATA['
    )
    out = out.replace(f"</{D}parameter>", "]]></parameter>")
    return out.replace(f"</{D}", "</").replace(f"<{D}", "<")


@SETTINGS
@given(assistant_turns())
def test_lxml_reads_the_same_structure(turn: dict[str, Any]) -> None:
    """lxml reading the raw block (values as CDATA, no lexer involved) agrees with our parse.

    `parse_completion` itself uses lxml only on a skeleton the lexer cut out, so this checks the lexer's
    cuts against libxml2 reading the text directly. Only values XML can carry take part (no control
    characters, no `]]>`, no CR: XML normalises it).
    """
    span = render_assistant_turn(turn, "thinking")
    assume(not _XML_ILLEGAL.search(span) and "]]>" not in span)
    msg = parse_completion(span, "thinking")
    if not turn["tool_calls"]:
        assert msg.tool_calls == []
        return
    block = span[span.index(TOOL_CALLS_OPEN) : span.index(TOOL_CALLS_CLOSE) + len(TOOL_CALLS_CLOSE)]
    root = etree.fromstring(_as_xml(block).encode(), etree.XMLParser(resolve_entities=False, huge_tree=True))
    from_xml = []
    for invoke in root.iterchildren("invoke"):
        args: dict[str, Any] = {}
        for param in invoke.iterchildren("parameter"):
            text = param.text or ""
            args[param.get("name")] = text if param.get("string") == "true" else json.loads(text)
        from_xml.append((invoke.get("name"), args))
    assert from_xml == [(c.name, c.arguments) for c in msg.tool_calls]
