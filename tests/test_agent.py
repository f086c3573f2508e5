"""The agent loop driven by the scripted model with real tools, under asyncio and trio.

Concurrency and eager dispatch are proven by the order of events and by tools that can only finish if
another one runs at the same time, never by timing.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from agentkit.tools.tool import ToolError, tool
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from agentkit import events as ev
from agentkit.agent import Agent, RunError
from agentkit.backends import ModelRequest, ScriptedModel
from agentkit.dsml import encode_messages, render_assistant_turn
from agentkit.limits import Limits, Pricing
from agentkit.messages import AssistantMessage, ToolMessage, message_to_dict
from agentkit.session import RunState

MODE = {"off": "chat", "high": "thinking", "max": "thinking"}


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def out(
    reasoning: str = "",
    content: str = "",
    calls: list[tuple[str, dict[str, Any]]] = (),
    thinking: str = "high",
) -> str:  # type: ignore[assignment]
    """A canonical completion, exactly as the V4 model writes it after the assistant prefix."""
    msg = {
        "reasoning_content": reasoning,
        "content": content,
        "tool_calls": [
            {"type": "function", "function": {"name": n, "arguments": json.dumps(a, ensure_ascii=False)}}
            for n, a in calls
        ],
    }
    return render_assistant_turn(msg, MODE[thinking])


def encoded(result_messages: list[Any], thinking: str) -> str:
    effort = "max" if thinking == "max" else None
    return encode_messages(
        [message_to_dict(m) for m in result_messages],
        MODE[thinking],
        drop_thinking=False,
        reasoning_effort=effort,
    )


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def echo(text: str) -> str:
    """Echo the text back."""
    return text


@tool
def boom(x: int) -> str:
    """Always fails."""
    raise ValueError(f"boom {x}")


# ------------------------------------------------------------------------------------------ basics


@pytest.mark.anyio
async def test_multi_step_run_keeps_reasoning_and_matches_encoder() -> None:
    model = ScriptedModel(
        [
            out("need sums", "", [("add", {"a": 1, "b": 2}), ("echo", {"text": "hi <b>"})]),
            out("one more", "partial", [("add", {"a": 3, "b": 4})]),
            out("all done", "1+2=3, 3+4=7"),
        ]
    )
    agent = Agent(model, [add, echo], instructions="Be exact.")
    result = await agent.run("sum things")
    assert result.ok and result.output == "1+2=3, 3+4=7"
    assert result.usage.requests == 3 and result.usage.tool_calls == 3
    tools = [m for m in result.messages if isinstance(m, ToolMessage)]
    assert [t.content for t in tools] == ["3", "hi <b>", "7"]
    # every earlier reasoning stays in context
    assert "need sums</think>" in result.transcript.text and "one more</think>" in result.transcript.text
    assert result.transcript.text == encoded(result.messages, "high")
    # each step appended only a suffix: every prompt extends the previous one
    prompts = [p.prompt for p in model.prompts]
    assert all(b is not None and a is not None and b.startswith(a) for a, b in itertools.pairwise(prompts))
    # the model's own output counts as seen: the new part is just the results turn
    assert model.prompts[1].suffix == (
        "<｜User｜><tool_result>3</tool_result>\n\n<tool_result>hi <b></tool_result><｜Assistant｜><think>"
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    thinking=st.sampled_from(["off", "high", "max"]),
    steps=st.lists(
        st.lists(
            st.tuples(
                st.sampled_from(["add", "echo"]),
                st.integers(-50, 50),
                st.text(st.characters(codec="utf-8", exclude_characters="<>\x00"), max_size=12),
            ),
            max_size=3,
        ),
        min_size=0,
        max_size=4,
    ),
    chunk=st.integers(1, 40),
    reasoning=st.text(st.characters(codec="utf-8", exclude_characters="<>"), max_size=20),
)
def test_transcript_equals_encoder_after_n_steps(
    thinking: str, steps: list[list[tuple[str, int, str]]], chunk: int, reasoning: str
) -> None:
    """The invariant: with canonical model output, transcript == encode_messages(messages), byte for byte."""
    outputs = []
    for calls in [c for c in steps if c]:
        rendered = [
            ("add", {"a": n, "b": 1}) if name == "add" else ("echo", {"text": t}) for name, n, t in calls
        ]
        outputs.append(out(reasoning if thinking != "off" else "", "", rendered, thinking))
    outputs.append(out(reasoning if thinking != "off" else "", "final", thinking=thinking))
    model = ScriptedModel(outputs, chunk_size=chunk)
    agent = Agent(model, [add, echo], instructions="sys", thinking=thinking)
    result = anyio.run(agent.run, "task")
    assert result.ok, result.status
    assert result.transcript.text == encoded(result.messages, thinking)
    if thinking == "max":
        assert "Reasoning Effort: Absolute maximum" in result.transcript.text


@pytest.mark.anyio
async def test_thinking_off_is_chat_mode() -> None:
    model = ScriptedModel([out("", "", [("add", {"a": 1, "b": 1})], "off"), out("", "2", thinking="off")])
    result = await Agent(model, [add], thinking="off").run("x")
    assert result.output == "2"
    assert model.prompts[0].prompt is not None and model.prompts[0].prompt.endswith("<｜Assistant｜></think>")
    assert model.prompts[1].suffix.endswith("<｜Assistant｜></think>")
    msgs = [m for m in result.messages if isinstance(m, AssistantMessage)]
    assert all(m.reasoning_content is None for m in msgs)


def test_run_sync_and_bad_config() -> None:
    agent = Agent(ScriptedModel([out("r", "hello")]), [])
    assert agent.run_sync("hi").output == "hello"
    with pytest.raises(ValueError, match="thinking"):
        Agent(ScriptedModel([]), thinking="medium")
    with pytest.raises(ValueError, match="unique"):
        Agent(ScriptedModel([]), [add, add])
    with pytest.raises(RunError, match="task"):
        agent.run_sync()


# ------------------------------------------------------------------------------- dispatch & events


@pytest.mark.anyio
async def test_parallel_calls_run_concurrently() -> None:
    """Two calls that each wait for the other to start can only both finish if they overlap."""
    started: set[str] = set()
    both = anyio.Event()
    log: list[str] = []

    @tool
    async def rendezvous(who: str) -> str:
        """Wait until the partner call has started too."""
        started.add(who)
        log.append(f"start {who}")
        if len(started) == 2:
            both.set()
        with anyio.fail_after(30):  # deadlock guard only: sequential execution would hang here
            await both.wait()
        log.append(f"end {who}")
        return who

    model = ScriptedModel(
        [out("", "", [("rendezvous", {"who": "a"}), ("rendezvous", {"who": "b"})]), out("", "ok")]
    )
    result = await Agent(model, [rendezvous]).run("go")
    assert result.ok
    assert sorted(log[:2]) == ["start a", "start b"] and sorted(log[2:]) == ["end a", "end b"]
    results = [m.content for m in result.messages if isinstance(m, ToolMessage)]
    assert results == ["a", "b"]  # call order, whatever order they finished in


@pytest.mark.anyio
async def test_sequential_tool_is_a_barrier() -> None:
    log: list[str] = []
    pair: set[int] = set()
    both = anyio.Event()

    @tool
    async def work(n: int) -> int:
        """Concurrent work; calls 1 and 2 can only finish together."""
        log.append(f"start {n}")
        if n in (1, 2):
            pair.add(n)
            if len(pair) == 2:
                both.set()
            with anyio.fail_after(30):  # deadlock guard only
                await both.wait()
        log.append(f"end {n}")
        return n

    @tool(sequential=True)
    async def commit(n: int) -> int:
        """Must run alone."""
        log.append(f"start commit {n}")
        await anyio.lowlevel.checkpoint()
        log.append(f"end commit {n}")
        return n

    calls = [("work", {"n": 1}), ("work", {"n": 2}), ("commit", {"n": 3}), ("work", {"n": 4})]
    model = ScriptedModel([out("", "", calls), out("", "done")])
    await Agent(model, [work, commit]).run("go")
    i_commit, i_commit_end = log.index("start commit 3"), log.index("end commit 3")
    assert log.index("end 1") < i_commit and log.index("end 2") < i_commit
    assert log.index("start 4") > i_commit_end
    assert log.index("start 2") < log.index("end 1")  # the non-sequential ones did overlap
    assert log.count("start commit 3") == 1


@pytest.mark.anyio
async def test_eager_dispatch_starts_tool_while_model_still_streams() -> None:
    model: ScriptedModel
    seen: list[int] = []

    @tool
    async def probe() -> str:
        """Record how far the model stream had got."""
        seen.append(model.chunks_yielded)
        return "ok"

    block = out("", "", [("probe", {}), ("echo", {"text": "x" * 400})])
    model = ScriptedModel([block, out("", "done")], chunk_size=8)
    total_chunks = -(-len(block) // 8)
    events: list[ev.Event] = []
    async for e in Agent(model, [probe, echo]).stream("go"):
        events.append(e)
    assert seen and seen[0] < total_chunks - 10, (seen, total_chunks)
    kinds = [e.kind for e in events if e.kind.startswith("tool_call") or e.kind == "tool_result"]
    first_result = kinds.index("tool_result")
    assert "tool_call_start" in kinds[first_result:]  # probe's result arrived before echo's call began


@pytest.mark.anyio
async def test_stream_events_cover_the_run() -> None:
    model = ScriptedModel(
        [out("think a", "hmm", [("add", {"a": 2, "b": 2})]), out("think b", "four")], chunk_size=3
    )
    events = [e async for e in Agent(model, [add]).stream("2+2")]
    kinds = [e.kind for e in events]
    assert kinds[0] == "step_start" and kinds[-1] == "run_end"
    assert "".join(e.text for e in events if isinstance(e, ev.ReasoningDelta)) == "think athink b"
    assert "".join(e.text for e in events if isinstance(e, ev.TextDelta)) == "hmmfour"
    args = "".join(e.text for e in events if isinstance(e, ev.ToolCallArgDelta))
    assert args in ("22", "")  # parameter deltas when the parser streams them
    end = next(e for e in events if isinstance(e, ev.ToolCallEnd))
    assert end.call.name == "add" and end.call.arguments == {"a": 2, "b": 2}
    res = next(e for e in events if isinstance(e, ev.ToolResult))
    assert (res.content, res.is_error) == ("4", False)
    assert [e.step for e in events if isinstance(e, ev.StepEnd)] == [1, 2]
    assert sum(isinstance(e, ev.UsageUpdate) for e in events) == 2
    final = events[-1]
    assert isinstance(final, ev.RunEnd) and final.result.output == "four"


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.anyio
async def test_tool_errors_become_results() -> None:
    @tool(timeout=0.05)
    async def slow() -> str:
        """Never finishes in time."""
        await anyio.sleep(30)
        return "late"

    @tool
    def refuse(path: str) -> str:
        """Raises a ToolError."""
        raise ToolError(f"no such file: {path}")

    calls = [
        ("nope", {"x": 1}),
        ("add", {"a": "not a number", "b": 1}),
        ("boom", {"x": 1}),
        ("slow", {}),
        ("refuse", {"path": "a.txt"}),
    ]
    model = ScriptedModel([out("", "", calls), out("", "done")])
    result = await Agent(model, [add, boom, slow, refuse]).run("go")
    res = [m for m in result.messages if isinstance(m, ToolMessage)]
    assert "Unknown tool `nope`" in res[0].content and "add" in res[0].content
    assert "a" in res[1].content and res[1].is_error
    assert "boom 1" in res[2].content
    assert "timed out" in res[3].content
    assert res[4].content == "no such file: a.txt"
    assert all(r.is_error for r in res)
    assert result.ok


@pytest.mark.anyio
async def test_repeated_identical_failures_are_flagged_and_budget_enforced() -> None:
    runs: list[int] = []

    @tool
    def flaky(x: int) -> str:
        """Fails."""
        runs.append(x)
        raise RuntimeError("down")

    model = ScriptedModel([out("", "", [("flaky", {"x": 1})]) for _ in range(5)] + [out("", "gave up")])
    result = await Agent(model, [flaky], limits=Limits(identical_failure_threshold=2)).run("go")
    res = [m.content for m in result.messages if isinstance(m, ToolMessage)]
    assert "down" in res[0] and "This exact call" not in res[0]
    assert "This exact call has now failed 2 times" in res[1]
    assert "exhausts its retry budget" in res[-1]
    assert len(runs) == 3  # retries(0) + threshold(2) + 1 runs, then refused
    assert result.output == "gave up"


@pytest.mark.anyio
async def test_malformed_block_is_fed_back_not_returned() -> None:
    torn = (
        'x</think>\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name="add">\n'
        '<｜DSML｜parameter name="a" string="false">1'
    )
    nameless = 'y</think>\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke nam="add">\n</｜DSML｜tool_calls>'
    model = ScriptedModel([torn, nameless, out("", "fine")])
    result = await Agent(model, [add]).run("go")
    assert result.output == "fine" and result.usage.tool_calls == 0  # the nameless call never runs
    assert "could not be parsed (the output ended inside the call to 'add')" in model.prompts[1].suffix
    assert "This call was not run: invoke without a name attribute" in model.prompts[2].suffix


@pytest.mark.anyio
async def test_torn_second_call_is_reported_alongside_the_first_result() -> None:
    good = out("", "", [("add", {"a": 1, "b": 1})]).removesuffix(
        "\n</｜DSML｜tool_calls><｜end▁of▁sentence｜>"
    )
    torn = good + '\n<｜DSML｜invoke name="add">\n<｜DSML｜parameter name="a" string="false">5'
    model = ScriptedModel([torn, out("", "ok")])
    result = await Agent(model, [add]).run("go")
    assert result.usage.tool_calls == 1
    suffix = model.prompts[1].suffix
    # the cut-off turn is closed with EOS, then the first call's result and a note share one turn
    assert suffix.startswith(
        "<｜end▁of▁sentence｜><｜User｜><tool_result>2</tool_result>\n\n[agentkit] Your last"
    )


# ------------------------------------------------------------------------------------------ limits


@pytest.mark.anyio
async def test_step_limit_asks_once_for_final_answer_without_tools() -> None:
    loop_out = out("", "", [("add", {"a": 1, "b": 1})])
    model = ScriptedModel([loop_out, loop_out, out("", "best effort: 2", [("add", {"a": 9, "b": 9})])])
    result = await Agent(model, [add], limits=Limits(max_steps=2)).run("go")
    assert result.status == "limit:max_steps" and result.output == "best effort: 2"
    assert [p.allow_tools for p in model.prompts] == [True, True, False]
    assert "reached its limit (max_steps)" in model.prompts[2].suffix
    assert "<tool_result>2</tool_result>" in model.prompts[2].suffix  # results and note share one turn
    assert result.usage.tool_calls == 2  # the final turn's call was not run
    assert result.transcript.text == encoded(result.messages, "high")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("limits", "status"),
    [
        (Limits(max_tool_calls=3), "limit:max_tool_calls"),
        (Limits(max_generated_tokens=30), "limit:max_generated_tokens"),
        (Limits(max_total_tokens=500), "limit:max_total_tokens"),
        (Limits(max_cost_usd=0.0001), "limit:max_cost_usd"),
        (Limits(max_wall_time_s=0.0), "limit:max_wall_time_s"),
    ],
)
async def test_other_limits(limits: Limits, status: str) -> None:
    step = out("", "", [("add", {"a": 1, "b": 1}), ("add", {"a": 2, "b": 2})])

    def script(req: ModelRequest) -> str:
        return step if req.allow_tools else out("", "final")

    model = ScriptedModel([script] * 7, pricing=Pricing(1000.0, 0.0, 1000.0))
    result = await Agent(model, [add], limits=limits).run("go")
    assert result.status == status and result.output == "final"
    if limits.max_tool_calls is not None:
        assert result.usage.tool_calls <= limits.max_tool_calls


# ----------------------------------------------------------------------------- structured output


class Answer(BaseModel):
    city: str
    temp_c: float


@pytest.mark.anyio
async def test_structured_output_validated_and_retried() -> None:
    model = ScriptedModel(
        [out("", '{"city": "Paris"}'), out("", '```json\n{"city": "Paris", "temp_c": 21.5}\n```')]
    )
    agent: Agent[None, Answer] = Agent(model, [], output_type=Answer)
    result = await agent.run("weather?")
    assert result.ok and result.output == Answer(city="Paris", temp_c=21.5)
    assert "did not match the required output schema" in model.prompts[1].suffix
    assert '"temp_c"' in model.prompts[0].suffix or '"temp_c"' in (model.prompts[0].prompt or "")


@pytest.mark.anyio
async def test_structured_output_gives_up_after_budget() -> None:
    model = ScriptedModel([out("", "nope"), out("", "still nope")])
    result = await Agent(model, [], output_type=Answer, limits=Limits(output_retries=1)).run("x")
    assert result.status == "output_invalid" and result.output is None and result.text == "still nope"


# ------------------------------------------------------------------------------ sessions & state


@pytest.mark.anyio
async def test_continue_finished_run_appends_only() -> None:
    model = ScriptedModel([out("a", "first"), out("b", "", [("add", {"a": 1, "b": 2})]), out("c", "second")])
    agent = Agent(model, [add])
    first = await agent.run("q1")
    saved = first.state.to_json()
    before = first.transcript.text
    second = await agent.run("q2", state=RunState.from_json(saved))
    assert second.output == "second"
    assert second.transcript.text.startswith(before)
    assert second.transcript.text[len(before) :].startswith("<｜User｜>q2<｜Assistant｜><think>")
    assert second.transcript.text == encoded(second.messages, "high")
    assert second.usage.requests == 3


def test_run_state_json_round_trip_and_errors() -> None:
    model = ScriptedModel([out("r", "", [("boom", {"x": 1})]), out("r", "ok")])
    result = Agent(model, [boom]).run_sync("go")
    data = result.state.to_json()
    again = RunState.from_json(data)
    assert again.to_json() == data
    assert again.transcript.text == result.transcript.text
    from agentkit.session import SessionError

    with pytest.raises(SessionError, match="version"):
        RunState.from_json(json.dumps({**json.loads(data), "version": 99}))
    with pytest.raises(SessionError, match="not valid JSON"):
        RunState.from_json("{")
    with pytest.raises(SessionError, match="malformed"):
        RunState.from_json(json.dumps({"version": 1}))


@pytest.mark.anyio
async def test_callable_script_sees_tool_results() -> None:
    def reply(req: ModelRequest) -> str:
        last = req.messages[-1]
        assert isinstance(last, ToolMessage)
        return out("", f"got {last.content}")

    model = ScriptedModel([out("", "", [("add", {"a": 20, "b": 22})]), reply])
    assert (await Agent(model, [add]).run("x")).output == "got 42"


# --------------------------------------------------------------------------------------- compaction


@pytest.mark.anyio
async def test_compaction_drops_whole_old_turns() -> None:
    steps = [out(f"reason {i}", "", [("echo", {"text": f"payload {i} " + "z" * 300})]) for i in range(12)]
    model = ScriptedModel([*steps, out("end", "done")])
    agent = Agent(model, [echo], limits=Limits(context_budget_tokens=1500, compact_at=0.9, compact_to=0.5))
    events = [e async for e in agent.stream("go")]
    result = events[-1].result  # type: ignore[union-attr]
    assert result.ok
    compactions = [e for e in events if isinstance(e, ev.ErrorEvent) and e.error_kind == "compacted"]
    assert 1 <= len(compactions) <= 4  # rare and in large steps
    assert result.transcript.epoch == len(compactions)
    msgs = result.messages
    # no call without its result, and kept turns keep their reasoning
    for i, m in enumerate(msgs):
        if isinstance(m, AssistantMessage) and m.tool_calls:
            assert isinstance(msgs[i + 1], ToolMessage) and msgs[i + 1].call_id == m.tool_calls[0].id
            assert m.reasoning_content and m.reasoning_content.startswith("reason")
    assert "reason 0" not in result.transcript.text and "reason 11" in result.transcript.text
    assert result.transcript.text == encoded(msgs, "high")


@pytest.mark.anyio
async def test_truncated_final_turn_is_reported() -> None:
    model = ScriptedModel([out("a long thought", "an answer that goes on and on and on")])
    result = await Agent(model, [], limits=Limits(max_tokens_per_step=5)).run("x")
    assert result.status == "truncated" and not result.ok
    assert model.prompts[0].prompt is not None


@pytest.mark.anyio
async def test_closing_the_stream_cancels_running_tools() -> None:
    from contextlib import aclosing

    started = anyio.Event()
    finished: list[str] = []
    cancelled: list[str] = []

    @tool
    async def wait_forever() -> str:
        """Never returns on its own."""
        started.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled.append("yes")
            raise
        finished.append("no")
        return "x"

    model = ScriptedModel([out("", "", [("wait_forever", {})]), out("", "never")])
    seen: list[str] = []
    async with aclosing(Agent(model, [wait_forever]).stream("go")) as events:
        async for e in events:
            seen.append(e.kind)
            if isinstance(e, ev.ToolCallEnd):
                await started.wait()
                break
    assert cancelled == ["yes"] and finished == []
    assert "run_end" not in seen


@pytest.mark.anyio
async def test_wall_time_limit_cancels_running_tools_then_asks_for_an_answer() -> None:
    @tool
    async def hang() -> str:
        """Never returns by itself."""
        await anyio.sleep_forever()
        return "never"

    def script(req: ModelRequest) -> str:
        return out("", "", [("hang", {})]) if req.allow_tools else out("", "gave up waiting")

    model = ScriptedModel([script, script])
    result = await Agent(model, [hang], limits=Limits(max_wall_time_s=0.3)).run("go")
    assert result.status == "limit:max_wall_time_s" and result.output == "gave up waiting"
    [res] = [m for m in result.messages if isinstance(m, ToolMessage)]
    assert "cancelled" in res.content and "wall-time limit" in res.content


@pytest.mark.anyio
async def test_each_tool_result_is_streamed_as_soon_as_it_lands() -> None:
    """The slow tool only finishes after the consumer has seen the fast tool's result."""
    gate = anyio.Event()

    model: ScriptedModel

    @tool
    async def fast() -> str:
        """Returns once the model has finished its turn (so the result lands after the stream)."""
        with anyio.fail_after(30):
            while model.chunks_yielded < total:  # noqa: ASYNC110 - the model has no event to wait on
                await anyio.sleep(0.001)
        for _ in range(5):
            await anyio.lowlevel.checkpoint()
        return "fast done"

    @tool
    async def slow() -> str:
        """Waits for the consumer."""
        with anyio.fail_after(30):  # deadlock guard only
            await gate.wait()
        return "slow done"

    block = out("", "", [("slow", {}), ("fast", {})])
    model = ScriptedModel([block, out("", "both")], chunk_size=8)
    total = -(-len(block) // 8)
    order: list[str] = []
    async for e in Agent(model, [fast, slow]).stream("go"):
        if isinstance(e, ev.ToolResult):
            order.append(e.content)
            if e.name == "fast":
                gate.set()
    assert order == ["fast done", "slow done"]
