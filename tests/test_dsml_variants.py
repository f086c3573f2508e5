"""Tolerant parsing of malformed-but-real V4 output; each fixture names the report it comes from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agentkit.dsml import (
    DSMLParseError,
    StreamParser,
    ToolCallEnd,
    ToolCallTorn,
    merge_deltas,
    parse_completion,
)
from agentkit.dsml.lexer import match_tag

VARIANTS = Path(__file__).parent / "fixtures" / "dsml" / "variants"
CASES = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(VARIANTS.glob("*.json"))}


def _no_markup(text: str) -> None:
    for i, ch in enumerate(text):
        if ch == "<":
            assert match_tag(text, i, True) is None, f"DSML tag left in content at {i}: {text[i : i + 40]!r}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_variant_parses_as_reported(name: str) -> None:
    case: dict[str, Any] = CASES[name]
    msg = parse_completion(case["text"], case["mode"], strict=False)
    assert msg.reasoning_content == case["reasoning"]
    assert msg.content == case["content"]
    assert [[c.name, c.arguments] for c in msg.tool_calls] == case["calls"]
    if case["torn"] is None:
        assert msg.torn_call is None
    else:
        assert msg.torn_call is not None
        assert {"name": msg.torn_call.name, "arguments": msg.torn_call.arguments} == case["torn"]
    _no_markup(msg.content)
    _no_markup(msg.reasoning_content)


@pytest.mark.parametrize("name", sorted(CASES))
def test_variant_is_reported_or_rejected_by_strict(name: str) -> None:
    """Strict mode either rejects the variant or (ASCII-pipe spellings, which DeepSeek's parser does
    not know) returns the markup as plain content; tolerant mode then says what it repaired."""
    case = CASES[name]
    tolerant = parse_completion(case["text"], case["mode"], strict=False)
    try:
        strict = parse_completion(case["text"], case["mode"])
    except DSMLParseError as exc:
        assert exc.position >= 0 and exc.reason
        assert tolerant.warnings or case["calls"] == [] or name == "one_line_block"
        return
    assert strict.tool_calls == [] and "DSML" in strict.content
    assert tolerant.warnings


@pytest.mark.parametrize("name", sorted(CASES))
def test_variant_every_two_chunk_split_matches_whole(name: str) -> None:
    """Split invariance; and the stream machine's result equals the lxml path's (differential)."""
    text, mode = CASES[name]["text"], CASES[name]["mode"]
    whole = StreamParser(mode)
    expected = merge_deltas(whole.feed(text) + whole.close())
    assert whole.result() == parse_completion(text, mode, strict=False)
    for cut in range(len(text) + 1):
        p = StreamParser(mode)
        got = merge_deltas(p.feed(text[:cut]) + p.feed(text[cut:]) + p.close())
        assert got == expected, cut


def test_complete_invoke_is_dispatchable_before_the_block_ends() -> None:
    text = CASES["truncated_inside_second_invoke"]["text"]
    cut = text.index("</｜DSML｜invoke>") + len("</｜DSML｜invoke>")
    p = StreamParser("chat")
    early = p.feed(text[:cut])
    ends = [e for e in early if isinstance(e, ToolCallEnd)]
    assert [(e.call.name, e.call.arguments) for e in ends] == [("a", {"x": 1})]
    late = p.feed(text[cut:]) + p.close()
    assert not any(isinstance(e, ToolCallEnd) for e in late)
    torn = [e for e in late if isinstance(e, ToolCallTorn)]
    assert len(torn) == 1 and torn[0].torn.name == "b"


def test_invalid_json_is_flagged_in_tolerant_and_rejected_in_strict() -> None:
    case = CASES["invalid_json_value"]
    msg = parse_completion(case["text"], "chat", strict=False)
    assert any("not valid JSON" in w for w in msg.warnings)
    with pytest.raises(DSMLParseError, match="not valid JSON"):
        parse_completion("\n\n" + case["text"], "chat")
