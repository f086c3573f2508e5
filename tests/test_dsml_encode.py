"""Encoder rules beyond the four gold vectors, each written down from DeepSeek's encoding_dsv4.py.

The expected strings are spelled out by hand (token by token) so a change in any rule shows up as a
readable diff rather than as a disagreement between two implementations.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentkit.dsml import (
    ASSISTANT,
    BOS,
    EOS,
    LATEST_REMINDER,
    THINK_END,
    THINK_START,
    USER,
    DSMLEncodeError,
    ToolCall,
    encode_messages,
    render_tool_call_block,
)
from agentkit.dsml.tokens import REASONING_EFFORT_MAX

D = "｜DSML｜"
KEYS = [
    "role",
    "content",
    "tools",
    "tool_calls",
    "function",
    "name",
    "arguments",
    "id",
    "tool_call_id",
    "type",
]
KEYS += ["text", "task", "wo_eos", "reasoning_content", "response_format"]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def call(cid: str, name: str = "f", args: Any = "{}") -> dict[str, Any]:
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}


def test_reasoning_effort_max_is_a_thinking_mode_preamble_at_message_zero() -> None:
    msgs = [{"role": "user", "content": "Why?"}]
    assert encode_messages(msgs, "thinking", reasoning_effort="max") == (
        BOS + REASONING_EFFORT_MAX + USER + "Why?" + ASSISTANT + THINK_START
    )
    plain = BOS + USER + "Why?" + ASSISTANT
    assert encode_messages(msgs, "thinking", reasoning_effort="high") == plain + THINK_START
    assert encode_messages(msgs, "chat", reasoning_effort="max") == plain + THINK_END
    # With context, message 0 was rendered long ago: no preamble, no BOS.
    ctx = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert encode_messages(msgs, "thinking", context=ctx, reasoning_effort="max") == (
        USER + "Why?" + ASSISTANT + THINK_START
    )


def test_user_then_latest_reminder_emits_the_transition_before_the_reminder() -> None:
    msgs = [{"role": "user", "content": "q"}, {"role": "latest_reminder", "content": "today"}]
    want = BOS + USER + "q" + ASSISTANT + THINK_END + LATEST_REMINDER + "today"
    assert encode_messages(msgs, "chat") == want


def test_tool_results_merge_into_one_user_turn_in_call_order() -> None:
    msgs = [
        {"role": "system", "content": "s", "tools": [TOOL]},
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": "", "reasoning_content": "r", "tool_calls": [call("a"), call("b")]},
        {"role": "tool", "tool_call_id": "b", "content": "B"},
        {"role": "tool", "tool_call_id": "a", "content": [{"type": "text", "text": "A1"}, {"type": "image"}]},
        {"role": "user", "content": "and?"},
    ]
    prompt = encode_messages(msgs, "thinking")
    assert prompt.endswith(
        f"{EOS}{USER}<tool_result>A1\n\n[Unsupported image]</tool_result>\n\n<tool_result>B</tool_result>"
        f"\n\nand?{ASSISTANT}{THINK_START}"
    )


def test_consecutive_users_merge_unless_the_first_has_a_task() -> None:
    merged = encode_messages([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "chat")
    assert merged == BOS + USER + "a\n\nb" + ASSISTANT + THINK_END
    task = encode_messages(
        [{"role": "user", "content": "a", "task": "query"}, {"role": "user", "content": "b"}], "chat"
    )
    assert task == BOS + USER + "a" + USER + "b" + ASSISTANT + THINK_END


def test_non_action_task_token_follows_the_message() -> None:
    msgs = [{"role": "user", "content": "x", "task": "query"}]
    assert encode_messages(msgs, "thinking") == BOS + USER + "x<｜query｜>"


def test_without_tools_old_reasoning_is_dropped_unless_asked() -> None:
    msgs = [
        {"role": "user", "content": "1"},
        {"role": "assistant", "content": "A", "reasoning_content": "R1"},
        {"role": "user", "content": "2"},
    ]
    dropped = encode_messages(msgs, "thinking")
    second = USER + "2" + ASSISTANT + THINK_START
    assert dropped == BOS + USER + "1" + ASSISTANT + THINK_END + "A" + EOS + second
    kept = encode_messages(msgs, "thinking", drop_thinking=False)
    assert kept == BOS + USER + "1" + ASSISTANT + THINK_START + "R1" + THINK_END + "A" + EOS + second


def test_developer_before_the_last_user_is_dropped_in_thinking_mode() -> None:
    msgs = [{"role": "developer", "content": "dev"}, {"role": "user", "content": "u"}]
    assert encode_messages(msgs, "thinking") == BOS + USER + "u" + ASSISTANT + THINK_START
    assert encode_messages(msgs, "chat") == BOS + USER + "dev" + USER + "u" + ASSISTANT + THINK_END


def test_arguments_that_are_not_a_json_object_string_become_one_parameter() -> None:
    bad_json = encode_messages([{"role": "assistant", "tool_calls": [call("a", args="not json")]}], "chat")
    assert f'<{D}parameter name="arguments" string="true">not json</{D}parameter>' in bad_json
    as_dict = encode_messages([{"role": "assistant", "tool_calls": [call("a", args={"k": 1})]}], "chat")
    assert f'<{D}parameter name="arguments" string="false">{{"k": 1}}</{D}parameter>' in as_dict
    with pytest.raises(DSMLEncodeError, match="JSON object"):
        encode_messages([{"role": "assistant", "tool_calls": [call("a", args="[1]")]}], "chat")


def test_parameters_render_strings_raw_and_the_rest_as_json() -> None:
    args = {"s": 'a<b&"c"\n', "n": 1, "x": None, "o": {"é": [True, 1.5]}}
    block = render_tool_call_block([call("a", args=json.dumps(args))])
    assert block == (
        f'<{D}tool_calls>\n<{D}invoke name="f">\n'
        f'<{D}parameter name="s" string="true">a<b&"c"\n</{D}parameter>\n'
        f'<{D}parameter name="n" string="false">1</{D}parameter>\n'
        f'<{D}parameter name="x" string="false">null</{D}parameter>\n'
        f'<{D}parameter name="o" string="false">{{"é": [true, 1.5]}}</{D}parameter>\n'
        f"</{D}invoke>\n</{D}tool_calls>"
    )
    assert render_tool_call_block([ToolCall(name="f", arguments=args)]) == block


def test_response_format_and_wo_eos() -> None:
    msgs = [
        {"role": "system", "content": "s", "response_format": {"type": "object"}},
        {"role": "assistant", "content": "x", "wo_eos": True},
    ]
    assert encode_messages(msgs, "chat") == (
        BOS + "s\n\n## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n"
        '{"type": "object"}x'
    )


@pytest.mark.parametrize(
    ("msgs", "kwargs", "match"),
    [
        ([{"role": "wizard", "content": "x"}], {}, "unknown role"),
        ([{"role": "developer", "content": ""}], {}, "non-empty"),
        ([{"role": "user", "content": "x", "task": "nope"}], {}, "invalid task"),
        ([{"role": "user", "content": None}], {}, "string"),
        ([{"role": "user", "content": "x"}], {"reasoning_effort": "low"}, "reasoning_effort"),
        ("not a list", {}, "list"),
        ([42], {}, "mapping"),
        ([{"role": "assistant", "tool_calls": [{"function": {}}]}], {}, "function.name"),
        ([{"role": "system", "content": "s", "tools": [{"type": "function"}]}], {}, "function"),
        ([{"role": "system", "response_format": {"x": object()}}], {}, "JSON"),
    ],
)
def test_bad_input_is_a_typed_error(msgs: Any, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(DSMLEncodeError, match=match):
        encode_messages(msgs, "chat", **kwargs)
    with pytest.raises(DSMLEncodeError, match="thinking_mode"):
        encode_messages([], "think")


junk = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.text(max_size=5),
        st.sampled_from(["user", "tool", "assistant"]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)
    ),
    max_leaves=15,
)


@settings(max_examples=150, deadline=None)
@given(st.lists(junk, max_size=5), st.sampled_from(["chat", "thinking"]), st.booleans())
def test_any_junk_gives_a_prompt_or_a_typed_error(msgs: list[Any], mode: str, drop: bool) -> None:
    try:
        out = encode_messages(msgs, mode, drop_thinking=drop)
    except DSMLEncodeError as exc:
        assert str(exc)
    else:
        assert isinstance(out, str)


def test_deeply_nested_values_are_typed_errors_or_fallbacks() -> None:
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(DSMLEncodeError):
        encode_messages([{"role": "system", "content": "s", "response_format": deep}], "chat")
    text = "[" * 100_000 + "]" * 100_000
    prompt = encode_messages([{"role": "assistant", "tool_calls": [call("a", args=text)]}], "chat")
    assert f'<{D}parameter name="arguments" string="true">[[[' in prompt
