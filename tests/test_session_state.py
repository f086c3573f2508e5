"""RunState, messages and the transcript survive JSON exactly; limits and usage reject bad input."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentkit.limits import Limits, Pricing, Usage
from agentkit.messages import (
    AssistantMessage,
    SystemMessage,
    ToolCall,
    ToolMessage,
    Transcript,
    UserMessage,
    message_from_dict,
    message_to_dict,
)
from agentkit.output import extract_json
from agentkit.session import BlockResult, RunState, SessionError, load_session, save_session

text = st.text(max_size=30)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=6,
)
calls = st.builds(
    ToolCall,
    id=st.from_regex(r"call_[0-9]{1,3}_[0-9]", fullmatch=True),
    name=st.from_regex(r"[a-z_]{1,10}", fullmatch=True),
    arguments=st.dictionaries(st.from_regex(r"[a-z]{1,6}", fullmatch=True), json_values, max_size=3),
)
messages = st.one_of(
    st.builds(SystemMessage, text),
    st.builds(UserMessage, text),
    st.builds(AssistantMessage, text, st.none() | text, st.lists(calls, max_size=2)),
    st.builds(
        ToolMessage, st.from_regex(r"call_[0-9]_[0-9]", fullmatch=True), st.just("t"), text, st.booleans()
    ),
)


@settings(max_examples=60, deadline=None)
@given(
    msgs=st.lists(messages, max_size=6),
    segments=st.lists(
        st.tuples(text, st.booleans(), st.none() | st.lists(st.integers(0, 200), max_size=4), st.booleans())
    ),
    usage=st.builds(
        Usage, requests=st.integers(0, 99), prompt_tokens=st.integers(0, 10**6), cost_usd=st.floats(0, 10)
    ),
    block=st.lists(calls, max_size=3),
    note=st.none() | text,
)
def test_run_state_round_trips_exactly(
    msgs: list, segments: list, usage: Usage, block: list[ToolCall], note: str | None
) -> None:
    tr = Transcript(epoch=2)
    for t, generated, ids, trusted in segments:
        tr.append(t, generated=generated, token_ids=ids, trusted=trusted)
    state = RunState(
        transcript=tr,
        messages=msgs,
        usage=usage,
        step=3,
        status="paused",
        block=block,
        block_results={0: BlockResult("r", True, "timeout")} if block else {},
        pending=list(range(1, len(block))),
        note=note,
    )
    again = RunState.from_json(state.to_json())
    assert again.to_json() == state.to_json()
    assert again.transcript.text == tr.text and again.transcript.epoch == 2
    assert [s.trusted for s in again.transcript.segments] == [s.trusted for s in tr.segments]
    assert [message_to_dict(m) for m in again.messages] == [message_to_dict(m) for m in msgs]
    assert [getattr(m, "is_error", None) for m in again.messages] == [
        getattr(m, "is_error", None) for m in msgs
    ]
    assert again.pending_calls == state.pending_calls


def test_message_from_dict_handles_non_object_arguments() -> None:
    raw = {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "[1]"}}],
    }
    msg = message_from_dict(raw)
    assert isinstance(msg, AssistantMessage)
    assert msg.tool_calls[0].raw_arguments == "[1]" and msg.tool_calls[0].arguments_json() == "[1]"
    with pytest.raises(ValueError, match="unknown message role"):
        message_from_dict({"role": "robot", "content": ""})


def test_save_and_load_session_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    state = RunState(messages=[UserMessage("hi")])
    path = save_session(tmp_path / "s.json", state, kv=b"\x00kv")
    loaded, kv = load_session(path)
    assert kv == b"\x00kv" and loaded.to_json() == state.to_json()
    (tmp_path / "s.json.kv").unlink()
    with pytest.raises(SessionError, match="KV snapshot"):
        load_session(path)
    with pytest.raises(SessionError, match="cannot read"):
        load_session(tmp_path / "missing.json")
    data = json.loads(path.read_text())
    data["messages"] = [{"role": "robot"}]
    path.write_text(json.dumps(data))
    with pytest.raises(SessionError, match="malformed"):
        load_session(path)


def test_limits_and_usage_validation() -> None:
    with pytest.raises(ValueError, match="max_steps"):
        Limits(max_steps=-1)
    with pytest.raises(ValueError, match="compact_to"):
        Limits(compact_at=0.5, compact_to=0.6)
    with pytest.raises(ValueError, match="unknown usage fields"):
        Usage.from_dict({"requests": 1, "bogus": 2})
    u = Usage(prompt_tokens=1000, cached_prompt_tokens=400, completion_tokens=10)
    assert Pricing(1.0, 0.1, 2.0).cost(1000, 400, 10) == pytest.approx(
        (600 * 1.0 + 400 * 0.1 + 10 * 2.0) / 1e6
    )
    assert u.total_tokens == 1010 and Usage.from_dict(u.to_dict()) == u
    limits = Limits(max_steps=3, max_cost_usd=1.0)
    assert limits.tripped(Usage(), 2, 0.0) is None
    assert limits.tripped(Usage(), 3, 0.0) == "max_steps"
    assert limits.tripped(Usage(cost_usd=1.5), 0, 0.0) == "max_cost_usd"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"a": 1}', '{"a": 1}'),
        ('```json\n{"a": 1}\n```', '{"a": 1}'),
        ("  ```\n[1]\n```  ", "[1]"),
        ("plain", "plain"),
    ],
)
def test_extract_json(raw: str, expected: str) -> None:
    assert extract_json(raw) == expected
