"""Split invariance of the stream parser, and a differential test of its machine against the lxml path.

For any division of a text into chunks the merged events equal those of the whole text, in both modes.
`parse_completion` reads the block structure off lxml's tree of a skeleton (`skeleton.py`), while the
stream parser assembles calls in its own incremental machine; on every random text the two must agree:
in strict mode the stream's verdict and calls equal `parse_completion`'s (the strict lexer there is a
separate implementation of the reference grammar), in tolerant mode the stream's result is
`parse_completion(strict=False)` and every ToolCallEnd is one of its calls, in order.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_dsml_strategies import agent_conversations

from agentkit.dsml import (
    ContentDelta,
    DSMLParseError,
    ParameterDelta,
    ParseError,
    ReasoningDelta,
    StreamParser,
    ToolCallEnd,
    ToolCallStart,
    encode_messages,
    merge_deltas,
    parse_completion,
)
from agentkit.dsml.stream import held_suffix

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FIXTURES = Path(__file__).parent / "fixtures" / "dsml"
SEEDS = [
    json.loads(p.read_text(encoding="utf-8"))["text"] for p in sorted((FIXTURES / "variants").glob("*.json"))
]
GOLD_PROMPT = (FIXTURES / "gold" / "output_1.txt").read_text(encoding="utf-8")
SEEDS.append(GOLD_PROMPT[GOLD_PROMPT.index("<think>") + 7 :])

# Pieces that sit on every decision boundary of the grammar, so random texts hit them often.
PIECES = [
    "</think>", "<think>", "<｜end▁of▁sentence｜>", "\n\n", "\n", " ", "<", ">", "/", '"', "a", "é",
    "<｜DSML｜tool_calls>", "</｜DSML｜tool_calls>", '<｜DSML｜invoke name="f">', "</｜DSML｜invoke>",
    '<｜DSML｜parameter name="k" string="true">', '<｜DSML｜parameter name="n" string="false">',
    "</｜DSML｜parameter>", "<|DSML|invoke", "｜DSML｜", "<![CDATA[", "]]>", "1", "{", "}",
]  # fmt: skip


def _events(text: str, chunks: list[str], mode: str, strict: bool) -> tuple[list[object], StreamParser]:
    p = StreamParser(mode, strict=strict)
    out: list[object] = []
    for c in chunks:
        out += p.feed(c)
    out += p.close()
    return merge_deltas(out), p  # type: ignore[arg-type]


def _chunk(text: str, cuts: list[int]) -> list[str]:
    points = sorted({min(c, len(text)) for c in cuts})
    edges = [0, *points, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(edges)]


texts = st.one_of(
    st.lists(st.sampled_from(PIECES), max_size=30).map("".join),
    st.tuples(st.sampled_from(SEEDS), st.integers(0, 10_000), st.integers(0, 5), st.text(max_size=3)).map(
        lambda t: t[0][: t[1] % (len(t[0]) + 1)] + t[3] + t[0][t[1] % (len(t[0]) + 1) + t[2] :]
    ),
    st.sampled_from(SEEDS),
)


@SETTINGS
@given(texts, st.lists(st.integers(0, 400), max_size=8), st.sampled_from(["chat", "thinking"]), st.booleans())
def test_any_chunking_gives_the_same_events(text: str, cuts: list[int], mode: str, strict: bool) -> None:
    whole, p_whole = _events(text, [text], mode, strict)
    chunked, _ = _events(text, _chunk(text, cuts), mode, strict)
    assert chunked == whole
    per_char, _ = _events(text, list(text), mode, strict)
    assert per_char == whole
    if strict:
        try:
            expected = parse_completion(text, mode)
        except DSMLParseError:
            assert p_whole.error is not None
        else:
            assert p_whole.error is None
            assert p_whole.result() == expected
    else:
        result = parse_completion(text, mode, strict=False)
        assert p_whole.result() == result
        ended = [e.call for e in whole if isinstance(e, ToolCallEnd)]
        assert ended == result.tool_calls
        # Deltas reassemble the message.
        assert "".join(e.text for e in whole if isinstance(e, ReasoningDelta)) == result.reasoning_content
        assert "".join(e.text for e in whole if isinstance(e, ContentDelta)) == result.content


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(agent_conversations(), st.lists(st.integers(0, 5000), max_size=10))
def test_streamed_agent_turn_matches_whole_parse(conv: list[dict[str, object]], cuts: list[int]) -> None:
    prompt = encode_messages(conv, "thinking")
    span = prompt[prompt.rfind("<｜Assistant｜><think>") + len("<｜Assistant｜><think>") :]
    events, p = _events(span, _chunk(span, cuts), "thinking", strict=False)
    result = p.result()
    assert result == parse_completion(span, "thinking", strict=False)
    starts = [e for e in events if isinstance(e, ToolCallStart)]
    assert [s.name for s in starts] == [c.name for c in result.tool_calls]
    # String parameters stream: their deltas concatenate to the final value.
    for i, call in enumerate(result.tool_calls):
        for key, value in call.arguments.items():
            if key in call.string_params:
                pieces = [
                    e.text for e in events if isinstance(e, ParameterDelta) and (e.index, e.name) == (i, key)
                ]
                assert "".join(pieces) == value


def test_hold_back_only_a_possible_marker_prefix() -> None:
    p = StreamParser("chat")
    assert merge_deltas(p.feed("hello <｜end▁of")) == [ContentDelta("hello")]
    assert held_suffix("abc</thi", 0, ["</think>"]) == 3
    assert held_suffix("abc</thx", 0, ["</think>"]) == 8
    # A `<` that cannot start a marker is released at once.
    p = StreamParser("chat")
    assert merge_deltas(p.feed("a < b")) == [ContentDelta("a < b")]


def test_parser_lifecycle_errors_are_clear() -> None:
    p = StreamParser("chat")
    with pytest.raises(ValueError, match="before close"):
        p.result()
    with pytest.raises(TypeError, match="str"):
        p.feed(b"x")  # type: ignore[arg-type]
    p.close()
    with pytest.raises(ValueError, match="after close"):
        p.feed("x")
    assert p.close() == []  # idempotent
    with pytest.raises(ValueError, match="thinking_mode"):
        StreamParser("fast")
    with pytest.raises(DSMLParseError, match="thinking_mode"):
        parse_completion("x", "fast", strict=False)


def test_after_an_error_the_strict_stream_goes_quiet() -> None:
    p = StreamParser("chat", strict=True)
    events = p.feed("a<think>b")
    assert events[-1] == ParseError("special token '<think>' inside content", 1)
    assert p.feed("more") == []
    assert p.close() == []
    with pytest.raises(DSMLParseError):
        p.result()
