"""DeepSeek's four gold conversations: prompts byte-identical, assistant spans parsed as upstream tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agentkit.dsml import (
    ASSISTANT,
    THINK_START,
    USER,
    StreamParser,
    encode_messages,
    merge_deltas,
    parse_completion,
)

GOLD = Path(__file__).parent / "fixtures" / "dsml" / "gold"
MARKER = ASSISTANT + THINK_START


def _load(n: int) -> list[dict[str, Any]]:
    data = json.loads((GOLD / f"input_{n}.json").read_text(encoding="utf-8"))
    if isinstance(data, dict):  # case 1: tools travel beside the messages and go on the first one
        data["messages"][0]["tools"] = data["tools"]
        data = data["messages"]
    return data


def _gold(n: int) -> str:
    return (GOLD / f"output_{n}.txt").read_text(encoding="utf-8")


@pytest.mark.parametrize(("n", "mode"), [(1, "thinking"), (2, "thinking"), (3, "thinking"), (4, "chat")])
def test_prompt_is_byte_identical(n: int, mode: str) -> None:
    assert encode_messages(_load(n), mode) == _gold(n)


def test_case_1_parse_spans() -> None:
    prompt = encode_messages(_load(1), "thinking")
    start = prompt.find(MARKER) + len(MARKER)
    end = prompt.find(USER, start)
    for strict in (True, False):
        first = parse_completion(prompt[start:end], "thinking", strict=strict)
        assert first.reasoning_content == (
            "The user wants to know the weather in Beijing. I should use the get_weather tool."
        )
        assert first.content == ""
        assert len(first.tool_calls) == 1
        call = first.tool_calls[0]
        assert call.name == "get_weather"
        assert call.arguments == {"location": "Beijing", "unit": "celsius"}
        assert json.loads(first.to_openai()["tool_calls"][0]["function"]["arguments"]) == call.arguments
        last = parse_completion(prompt[prompt.rfind(MARKER) + len(MARKER) :], "thinking", strict=strict)
        assert last.reasoning_content == "Got the weather data. Let me format a nice response."
        assert "22°C" in last.content
        assert last.tool_calls == []
        assert not first.warnings and not last.warnings


def test_case_2_drops_old_reasoning_and_parses_last() -> None:
    prompt = encode_messages(_load(2), "thinking")
    assert "The user said hello" not in prompt
    last = parse_completion(prompt[prompt.rfind(MARKER) + len(MARKER) :], "thinking")
    assert last.reasoning_content == "The user asks about the capital of France. It is Paris."
    assert last.content == "The capital of France is Paris."
    assert last.tool_calls == []


def test_case_3_spans_parse() -> None:
    prompt = encode_messages(_load(3), "thinking")
    start = prompt.find(MARKER) + len(MARKER)
    end = prompt.find(USER, start)
    call = parse_completion(prompt[start:end], "thinking").tool_calls[0]
    assert (call.name, call.arguments) == ("search", {"queries": "小柴胡冲剂 布洛芬 相互作用 一起吃"})


REASONING_1 = "The user wants to know the weather in Beijing. I should use the get_weather tool."


def test_openai_export_matches_reference_shape() -> None:
    prompt = encode_messages(_load(1), "thinking")
    start = prompt.find(MARKER) + len(MARKER)
    out = parse_completion(prompt[start : prompt.find(USER, start)], "thinking").to_openai()
    assert out == {
        "role": "assistant",
        "content": "",
        "reasoning_content": REASONING_1,
        "tool_calls": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "arguments": '{"location": "Beijing", "unit": "celsius"}',
                },
            }
        ],
    }


@pytest.mark.parametrize("n", [1, 2, 3])
def test_gold_spans_every_two_chunk_split(n: int) -> None:
    prompt = _gold(n)
    starts = [i + len(MARKER) for i in range(len(prompt)) if prompt.startswith(MARKER, i)]
    for start in starts:
        end = prompt.find(USER, start)
        span = prompt[start : end if end != -1 else len(prompt)]
        for strict in (True, False):
            whole = StreamParser("thinking", strict=strict)
            expected = merge_deltas(whole.feed(span) + whole.close())
            assert whole.result() == parse_completion(span, "thinking", strict=strict)
            for cut in range(len(span) + 1):
                p = StreamParser("thinking", strict=strict)
                assert merge_deltas(p.feed(span[:cut]) + p.feed(span[cut:]) + p.close()) == expected
