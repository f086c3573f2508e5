"""The parse policy through the real loop: nothing the model wrote is run, lost or accepted silently.

Every case the independent check found (and the peers' parser suites it ported) is driven through
`Agent` with the scripted model: a block that yields no call, each repair that would change what a call
means, a call inside the reasoning, prose that quotes a DSML tag, a JSON invoke body, an empty answer.
Each asserts what the host sees: which tools actually ran (a counter in the tool itself), what the model
was told next (its next prompt), the warning events, and the run's status.
"""

from __future__ import annotations

from typing import Any

import pytest
from agentkit.tools.tool import tool

from agentkit import events as ev
from agentkit.agent import Agent
from agentkit.backends import ScriptedModel
from agentkit.dsml import parse_completion
from agentkit.dsml.policy import CHANGES_MEANING, valid_tool_name
from agentkit.limits import Limits

pytestmark = pytest.mark.anyio
D = "｜DSML｜"
EOS = "<｜end▁of▁sentence｜>"
RAN: list[dict[str, Any]] = []


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _clear() -> None:
    RAN.clear()


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    RAN.append({"tool": "add", "a": a, "b": b})
    return a + b


@tool
def get_weather(city: str, days: int = 1) -> str:
    """Weather for a city."""
    RAN.append({"tool": "get_weather", "city": city, "days": days})
    return f"sunny in {city} for {days} days"


def param(name: str, value: str, string: bool = False) -> str:
    return f'<{D}parameter name="{name}" string="{"true" if string else "false"}">{value}</{D}parameter>'


def block(*invokes: str) -> str:
    return f"\n\n<{D}tool_calls>\n" + "\n".join(invokes) + f"\n</{D}tool_calls>"


def invoke(name: str, *params: str) -> str:
    return f'<{D}invoke name="{name}">\n' + "\n".join(params) + f"\n</{D}invoke>"


ANSWER = "done</think>the answer" + EOS


async def run(outputs: list[str], limits: Limits | None = None) -> tuple[Any, list[ev.Event], ScriptedModel]:
    model = ScriptedModel(outputs)
    events: list[ev.Event] = []
    async for e in Agent(model, [add, get_weather], limits=limits).stream("go"):
        events.append(e)
    end = events[-1]
    assert isinstance(end, ev.RunEnd)
    return end.result, events, model


def warnings(events: list[ev.Event]) -> list[str]:
    return [e.message for e in events if isinstance(e, ev.ErrorEvent) and e.error_kind == "malformed_call"]


LOST_CALLS = {
    "empty block": "r</think>" + block() + EOS,
    "misspelt invoke tag": "r</think>"
    + f'\n\n<{D}tool_calls>\n<{D}invok name="add">\n{param("a", "1")}\n</{D}invok>\n</{D}tool_calls>'
    + EOS,
    "text but no invoke": f"r</think>\n\n<{D}tool_calls>\nadd 1 and 2 please\n</{D}tool_calls>" + EOS,
}


@pytest.mark.parametrize("case", sorted(LOST_CALLS))
async def test_a_block_without_a_call_is_never_an_empty_success(case: str) -> None:
    result, events, model = await run([LOST_CALLS[case], ANSWER])
    assert result.status == "completed" and result.text == "the answer"  # the model got a second go
    assert "could not be parsed" in model.prompts[1].suffix  # ...because it was told what went wrong
    assert warnings(events)
    assert RAN == []


def test_the_issue_repro_no_longer_completes_empty() -> None:
    lost = f"r</think>\n\n<{D}tool_calls>\n</{D}tool_calls>" + EOS
    result = Agent(ScriptedModel([lost, "r</think>ok" + EOS]), []).run_sync("go")
    assert (result.status, result.text) == ("completed", "ok")
    assert result.usage.requests == 2


async def test_lost_calls_in_a_row_end_the_run_as_malformed() -> None:
    lost = LOST_CALLS["empty block"]
    result, events, _ = await run([lost] * 3, Limits(malformed_retries=2))
    assert result.status == "malformed" and not result.ok
    assert result.usage.requests == 3
    assert any(isinstance(e, ev.ErrorEvent) and e.error_kind == "malformed" for e in events)


async def test_the_malformed_streak_resets_after_a_good_turn() -> None:
    lost = LOST_CALLS["empty block"]
    good = "r</think>" + block(invoke("add", param("a", "1"), param("b", "2"))) + EOS
    result, _, _ = await run([lost, good, lost, good, ANSWER], Limits(malformed_retries=1))
    assert result.status == "completed"
    assert RAN == [{"tool": "add", "a": 1, "b": 2}] * 2


MEANING_CHANGED = {
    "duplicate parameter": (invoke("add", param("a", "1"), param("a", "5"), param("b", "2")), "duplicate"),
    "non-JSON value for a JSON parameter": (
        invoke("add", param("a", "[1,"), param("b", "2")),
        "not valid JSON",
    ),
    "invoke without a name": (f'<{D}invoke nam="add">\n{param("a", "1")}\n</{D}invoke>', "without a name"),
    "not a tool name": (invoke("add two numbers", param("a", "1"), param("b", "2")), "is not a tool name"),
}


@pytest.mark.parametrize("case", sorted(MEANING_CHANGED))
async def test_a_repair_that_changes_a_call_is_not_run(case: str) -> None:
    call, why = MEANING_CHANGED[case]
    result, events, model = await run(["r</think>" + block(call) + EOS, ANSWER])
    assert RAN == []  # the tool never ran: not with the later value, not with text for a number
    result_turn = model.prompts[1].suffix
    assert "This call was not run" in result_turn and why in result_turn
    assert any(why in w for w in warnings(events))
    assert result.status == "completed"


async def test_valid_calls_beside_a_refused_one_still_run() -> None:
    turn = block(invoke("add", param("a", "1"), param("b", "2")), MEANING_CHANGED["duplicate parameter"][0])
    _result, _, model = await run(["r</think>" + turn + EOS, ANSWER])
    assert RAN == [{"tool": "add", "a": 1, "b": 2}]
    assert "<tool_result>3</tool_result>" in model.prompts[1].suffix
    assert "This call was not run" in model.prompts[1].suffix


async def test_a_call_inside_the_reasoning_is_not_run() -> None:
    no_think_end = "I should add them" + block(invoke("add", param("a", "1"), param("b", "2"))) + EOS
    _result, events, model = await run([no_think_end, ANSWER])
    assert RAN == []
    assert "written inside the reasoning" in model.prompts[1].suffix
    assert warnings(events)


async def test_prose_quoting_a_dsml_tag_stays_prose() -> None:
    prose = f'Documentation quotes <{D}invoke name=" literally. Then:'
    result, events, _model = await run(
        ["r</think>" + prose + block(invoke("add", param("a", "1"), param("b", "2"))) + EOS, ANSWER]
    )
    assert RAN == [{"tool": "add", "a": 1, "b": 2}]  # only the real call
    first = result.messages[2]
    assert first.content == prose  # word for word
    assert [c.name for c in first.tool_calls] == ["add"]
    assert warnings(events) == []


async def test_a_json_object_body_is_read_as_the_arguments() -> None:
    body = f'<{D}invoke name="get_weather">{{"city": "Beijing", "days": 3}}</{D}invoke>'
    _result, events, _ = await run(["r</think>" + block(body) + EOS, ANSWER])
    assert RAN == [{"tool": "get_weather", "city": "Beijing", "days": 3}]  # never {}
    assert warnings(events) == []  # a faithful decode: silent, only logged


async def test_a_json_body_that_is_not_an_object_is_refused_not_emptied() -> None:
    body = f'<{D}invoke name="get_weather">["Beijing"]</{D}invoke>'
    _result, _, model = await run(["r</think>" + block(body) + EOS, ANSWER])
    assert RAN == []
    assert "This call was not run" in model.prompts[1].suffix


async def test_meaning_preserving_repairs_stay_silent() -> None:
    # a wrapper-less invoke and extra whitespace between tags: repaired, run, no warning, no note
    sloppy = "r</think>\n\n" + invoke("add", param("a", "1"), "", param("b", "2")) + EOS
    _result, events, model = await run([sloppy, ANSWER])
    assert RAN == [{"tool": "add", "a": 1, "b": 2}]
    assert warnings(events) == []
    assert "[agentkit]" not in model.prompts[1].suffix


async def test_an_empty_answer_is_never_ok() -> None:
    empty = "r</think>" + EOS
    retried, _events, model = await run([empty, ANSWER])
    assert retried.status == "completed" and retried.text == "the answer"
    assert "Your last reply was empty" in model.prompts[1].suffix
    gave_up, _, _ = await run([empty, empty])
    assert gave_up.status == "empty" and not gave_up.ok
    at_once, _, _ = await run([empty], Limits(empty_retries=0))
    assert at_once.status == "empty" and at_once.usage.requests == 1
    nothing, _, _ = await run([EOS, EOS])  # not even a </think>
    assert nothing.status in ("empty", "malformed") and not nothing.ok


def test_whitespace_around_the_block_is_kept_as_written() -> None:
    text = (
        "r</think>Before text.  \n"
        + f"<{D}tool_calls>\n"
        + invoke("add", param("a", "1"))
        + (f"\n</{D}tool_calls>\nAfter text" + EOS)
    )
    msg = parse_completion(text, "thinking", strict=False)
    assert msg.content == "Before text.  \n\nAfter text"
    canonical = "r</think>Before." + block(invoke("add", param("a", "1"))) + EOS
    assert parse_completion(canonical, "thinking", strict=False).content == "Before."


def test_tool_names() -> None:
    for good in ("add", "get_weather", "fs.read", "mcp:server-tool", "a" * 128, "_x", "9lives"):
        assert valid_tool_name(good), good
    for bad in ("", " add", "add two", " literally. Then:", "a" * 129, "-x", "add\n", 'a"b'):
        assert not valid_tool_name(bad), bad


def test_every_meaning_changing_code_is_emitted_by_the_parser() -> None:
    # the policy's table and the parser agree: each code it names is one the parser can produce
    from agentkit.dsml.stream import StreamParser

    samples = [
        "r</think>" + block() + EOS,
        "r</think>" + block(MEANING_CHANGED["duplicate parameter"][0]) + EOS,
        "r</think>" + block(MEANING_CHANGED["non-JSON value for a JSON parameter"][0]) + EOS,
        "r</think>" + block(MEANING_CHANGED["invoke without a name"][0]) + EOS,
        LOST_CALLS["misspelt invoke tag"],
        "think" + block(invoke("add", param("a", "1"))) + EOS,
    ]
    seen = set()
    for text in samples:
        p = StreamParser("thinking")
        seen |= {getattr(e, "code", None) for e in [*p.feed(text), *p.close()]}
    assert seen >= CHANGES_MEANING
