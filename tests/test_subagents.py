"""Sub-agents (`Agent.as_tool`): children called in one block run concurrently, their usage is summed into
the parent's, and a child's approval pause surfaces through the parent's run state, saved as JSON and
resumed in another process.

The agents are defined once in a module (AGENT_SRC) that this process and the resuming one both import:
tools and agents are code, a paused run is data. Each scripted "model" is a policy that decides from the
request it gets (the task, the last tool result), so concurrent children sharing one model stay exact
however their calls interleave.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import pytest
from agentkit.tools.context import RunContext
from agentkit.tools.sandbox import open_sandbox
from agentkit.tools.tool import ToolDefinitionError, tool

from agentkit import events as ev
from agentkit.agent import Agent, RunError
from agentkit.backends import ScriptedModel
from agentkit.limits import Limits
from agentkit.messages import ToolMessage
from agentkit.session import RunState, save_session
from agentkit.store import open_store

AGENT_SRC = textwrap.dedent(
    '''
    import time
    from pathlib import Path

    import anyio
    from agentkit.agent import Agent
    from agentkit.backends import ScriptedModel
    from agentkit.backends.scripted import scripted_turn
    from agentkit.messages import ToolMessage, UserMessage
    from agentkit.tools.tool import tool

    WINDOWS = []  # (topic, start, end) of each research call, on this process's monotonic clock
    OUT = Path(__file__).parent

    @tool
    async def research(topic: str) -> str:
        """Look a topic up (takes a while).

        Args:
            topic: what to look up
        """
        t0 = time.monotonic()
        await anyio.sleep(0.25)
        WINDOWS.append((topic, t0, time.monotonic()))
        return f"notes on {topic}"

    @tool(requires_approval=True)
    def publish(text: str) -> str:
        """Publish a text (needs a human's OK).

        Args:
            text: what to publish
        """
        with (OUT / "published.txt").open("a") as f:
            f.write(text + "\\n")
        return f"published {len(text)} chars"

    def first_user(req):
        return [m.content for m in req.messages if isinstance(m, UserMessage)][0]

    def child_policy(req):
        """Call the one tool the task asks for, then answer with its result."""
        last = req.messages[-1]
        if isinstance(last, ToolMessage):
            return scripted_turn("done", f"{last.name}: {last.content}")
        task = first_user(req)
        if task.startswith("publish "):
            return scripted_turn("publish it", calls=[("publish", {"text": task[8:]})])
        if task.startswith("delegate "):
            return scripted_turn("pass it on", calls=[("writer", {"task": task[9:]})])
        return scripted_turn("look it up", calls=[("research", {"topic": task})])

    def parent_policy(req):
        """The task is "agent:subtask;agent:subtask": one block calling each, then all results joined."""
        if isinstance(req.messages[-1], ToolMessage):
            results = [m.content for m in req.messages if isinstance(m, ToolMessage)]
            return scripted_turn("all back", " | ".join(results))
        parts = [p.split(":", 1) for p in first_user(req).split(";")]
        return scripted_turn("delegate", calls=[(name, {"task": t}) for name, t in parts])

    def build(parent_approver=None):
        model = ScriptedModel([child_policy] * 50, name="children")
        researcher = Agent(model, [research], instructions="You research.")
        writer = Agent(model, [publish], instructions="You publish.")
        manager = Agent(model, [writer.as_tool("writer", "Publishes texts.")], instructions="You manage.")
        tools = [
            researcher.as_tool("researcher", "Researches a topic."),
            writer.as_tool("writer", "Publishes texts."),
            manager.as_tool("manager", "Has texts published."),
        ]
        return Agent(ScriptedModel([parent_policy] * 50, name="parent"), tools,
                     instructions="You delegate.", approver=parent_approver)
    '''
)

RESUME_SRC = textwrap.dedent(
    """
    import json, sys
    import anyio
    from agentkit import events as ev
    from agentkit.session import load_session
    import agent_def

    async def main():
        state, _ = load_session(sys.argv[1])
        children = {}
        async for e in agent_def.build().stream(state=state, approvals=json.loads(sys.argv[2])):
            if isinstance(e, ev.SubAgentEvent) and isinstance(e.event, ev.RunEnd):
                children[e.call_id] = e.event.result.usage.to_dict()
            if isinstance(e, ev.RunEnd):
                result = e.result
        print(json.dumps({"status": result.status, "output": result.output, "state": result.state.to_json(),
                          "children": children}))

    anyio.run(main)
    """
)

SUMMED = ("requests", "prompt_tokens", "cached_prompt_tokens", "prefilled_tokens", "completion_tokens")


@pytest.fixture
def agent_def(tmp_path: Path) -> Any:
    (tmp_path / "agent_def.py").write_text(AGENT_SRC)
    sys.path.insert(0, str(tmp_path))
    try:
        import agent_def  # type: ignore[import-not-found]

        return importlib.reload(agent_def)
    finally:
        sys.path.remove(str(tmp_path))


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def own_usage(state: RunState) -> dict[str, int]:
    """What the parent's own model calls cost, from its per-step records (children are not in them)."""
    records = [s.model for s in state.steps if s.model is not None]
    return {
        "requests": len(records),
        "prompt_tokens": sum(r.prompt_tokens for r in records),
        "cached_prompt_tokens": sum(r.cached_tokens for r in records),
        "prefilled_tokens": sum(r.prefilled_tokens for r in records),
        "completion_tokens": sum(r.completion_tokens for r in records),
    }


def child_ends(events: list[Any]) -> dict[str, Any]:
    return {
        e.call_id: e.event.result
        for e in events
        if isinstance(e, ev.SubAgentEvent) and isinstance(e.event, ev.RunEnd)
    }


@pytest.mark.anyio
async def test_two_children_run_concurrently_and_their_usage_is_summed(agent_def: Any) -> None:
    parent = agent_def.build()
    events = [e async for e in parent.stream("researcher:cats;researcher:dogs")]
    result = events[-1].result
    assert result.status == "completed"
    assert result.output == "research: notes on cats | research: notes on dogs"

    # Concurrency, twice over: the children's tool calls overlap in time, and in the parent's event
    # stream each child started before the other one ended.
    (t1, a0, a1), (t2, b0, b1) = sorted(agent_def.WINDOWS)
    assert (t1, t2) == ("cats", "dogs") and a0 < b1 and b0 < a1
    sub = [(i, e.call_id, e.event) for i, e in enumerate(events) if isinstance(e, ev.SubAgentEvent)]
    first = {cid: min(i for i, c, x in sub if c == cid) for cid in ("call_1_0", "call_1_1")}
    ended = {c: i for i, c, x in sub if isinstance(x, ev.RunEnd)}
    assert first["call_1_0"] < ended["call_1_1"] and first["call_1_1"] < ended["call_1_0"]
    assert {e.agent for e in events if isinstance(e, ev.SubAgentEvent)} == {"researcher"}

    # Usage: the parent's total is its own model calls plus both children's, field by field.
    kids = child_ends(events)
    assert set(kids) == {"call_1_0", "call_1_1"} and all(k.status == "completed" for k in kids.values())
    own = own_usage(result.state)
    for name in SUMMED:
        want = own[name] + sum(getattr(k.usage, name) for k in kids.values())
        assert getattr(result.usage, name) == want, name
    assert own["requests"] == 2 and all(k.usage.requests == 2 for k in kids.values())
    assert result.usage.tool_calls == 2 + 1 + 1  # the parent's two delegations, one research call each
    assert result.usage.context_tokens == result.state.steps[-1].model.prompt_tokens + (
        result.state.steps[-1].model.completion_tokens
    )  # the parent's own window, not a sum


def test_child_approval_pauses_the_parent_and_resumes_from_json_in_another_process(
    agent_def: Any, tmp_path: Path
) -> None:
    async def first() -> list[Any]:
        return [e async for e in agent_def.build().stream("researcher:birds;writer:publish hello")]

    events = anyio.run(first)
    paused = events[-1].result
    assert paused.status == "paused"
    [pending] = paused.pending_approvals
    assert (pending.id, pending.name) == ("call_1_1/call_1_0", "publish")
    assert pending.arguments == {"text": "hello"}
    asked = [e for e in events if isinstance(e, ev.ApprovalRequired)]
    assert [a.call.id for a in asked] == ["call_1_1/call_1_0"]
    assert not (tmp_path / "published.txt").exists()
    # the sibling that needed no approval finished; its result waits in the parent's block
    assert paused.state.block_results[0].content == "research: notes on birds"
    researcher = child_ends(events)["call_1_0"]
    statuses = {cid: r.status for cid, r in child_ends(events).items()}
    assert statuses == {"call_1_0": "completed", "call_1_1": "paused"}

    path = save_session(tmp_path / "paused.json", paused.state)
    assert json.loads(path.read_text())["children"]["1"]["status"] == "paused"
    (tmp_path / "resume.py").write_text(RESUME_SRC)
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "resume.py"), str(path), json.dumps({pending.id: True})],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = json.loads(proc.stdout.strip().splitlines()[-1])
    assert done["status"] == "completed"
    assert done["output"] == "research: notes on birds | publish: published 5 chars"
    assert (tmp_path / "published.txt").read_text() == "hello\n"  # ran once, after the OK, in process 2
    final = RunState.from_json(done["state"])
    assert final.run_id == paused.state.run_id and not final.children and not final.pending
    writer = done["children"]["call_1_1"]  # the writer's whole run: its first half was counted in process 1
    own = own_usage(final)
    for name in SUMMED:
        assert getattr(final.usage, name) == own[name] + getattr(researcher.usage, name) + writer[name], name
    assert (final.usage.requests, final.usage.tool_calls) == (2 + 2 + 2, 2 + 1 + 1)


@pytest.mark.anyio
async def test_a_denied_child_call_and_nested_children(agent_def: Any, tmp_path: Path) -> None:
    parent = agent_def.build()
    paused = await parent.run("manager:delegate publish deep")
    [pending] = paused.pending_approvals
    assert pending.id == "call_1_0/call_1_0/call_1_0" and pending.name == "publish"
    # the decisions are checked before anything runs, and the run stays resumable
    with pytest.raises(RunError, match="missing"):
        await parent.run(state=paused.state.to_json(), approvals={})
    with pytest.raises(RunError, match="not pending"):
        await parent.run(state=paused.state.to_json(), approvals={pending.id: True, "call_1_0/x": True})
    done = await parent.run(state=paused.state.to_json(), approvals={pending.id: "not today"})
    assert done.status == "completed"
    assert "not approved: not today" in (done.output or "")
    assert not (tmp_path / "published.txt").exists()


@pytest.mark.anyio
async def test_a_callers_approver_decides_for_its_children(agent_def: Any, tmp_path: Path) -> None:
    asked: list[str] = []

    def approver(call: Any) -> bool:
        asked.append(call.name)
        return True

    result = await agent_def.build(parent_approver=approver).run("writer:publish inline")
    assert result.status == "completed" and asked == ["publish"]
    assert (tmp_path / "published.txt").read_text() == "inline\n"


@pytest.mark.anyio
async def test_child_failures_and_limits_reach_the_parent_as_results(agent_def: Any) -> None:
    broken = Agent(ScriptedModel([], name="empty"), [], instructions="x")  # no outputs: a ModelError
    policy = agent_def.child_policy
    limited = Agent(ScriptedModel([policy] * 5), [agent_def.research], limits=Limits(max_steps=1))
    parent = Agent(
        ScriptedModel([agent_def.parent_policy] * 3),
        [broken.as_tool("broken", "Fails."), limited.as_tool("limited", "Stops early.")],
    )
    result = await parent.run("broken:anything;limited:owls")
    assert result.status == "completed"
    broken_msg, limited_msg = [m for m in result.messages if isinstance(m, ToolMessage)]
    assert broken_msg.is_error and "ran out of outputs" in broken_msg.content
    assert not limited_msg.is_error
    assert "stopped at its limit (max_steps)" in limited_msg.content


@pytest.mark.anyio
async def test_sandbox_policy(agent_def: Any, tmp_path: Path) -> None:
    @tool(name="research")  # what the child policy calls
    async def peek(ctx: RunContext[None], topic: str) -> str:
        """Read the shared note.

        Args:
            topic: ignored
        """
        return (await ctx.require_sandbox().read_file("note.txt")).decode()

    child = Agent(ScriptedModel([agent_def.child_policy] * 6), [peek])
    async with await open_sandbox("local") as sb:
        await sb.write_file("note.txt", "from the parent's sandbox")
        parent = Agent(
            ScriptedModel([agent_def.parent_policy] * 4),
            [child.as_tool("sharing", "Shares.", inherit_sandbox=True), child.as_tool("own", "Isolated.")],
            sandbox=sb,
        )
        result = await parent.run("sharing:x;own:y")
    shared, isolated = [m for m in result.messages if isinstance(m, ToolMessage)]
    assert shared.content == "research: from the parent's sandbox"
    assert "needs a sandbox, but the run has none" in isolated.content  # no sandbox of its own


@pytest.mark.anyio
async def test_a_paused_child_outside_an_agent_run_is_a_tool_error(agent_def: Any) -> None:
    writer_tool = agent_def.build().tools["writer"]
    assert writer_tool.parameters_schema["required"] == ["task"]
    outcome = await writer_tool.invoke({"task": "publish alone"})
    assert outcome.is_error and "can pause" in outcome.content


def test_as_tool_rejects_bad_definitions() -> None:
    child = Agent(ScriptedModel([]), [])
    with pytest.raises(ValueError, match="needs a description"):
        child.as_tool("helper", " ")
    with pytest.raises(ToolDefinitionError, match="tool name"):
        child.as_tool("no spaces allowed", "A helper.")


@pytest.mark.anyio
async def test_the_parents_limits_count_its_childrens_usage(agent_def: Any) -> None:
    """The children's tokens are the parent's: a token budget the parent alone stays under trips."""
    alone = await agent_def.build().run("researcher:cats")
    own = own_usage(alone.state)
    first_step = alone.state.steps[0].model
    assert first_step is not None
    budget = first_step.prompt_tokens + first_step.completion_tokens + 5  # the parent's first step fits
    assert own["prompt_tokens"] + own["completion_tokens"] < alone.usage.total_tokens
    parent = agent_def.build()
    parent.limits = Limits(max_total_tokens=budget)
    result = await parent.run("researcher:cats")
    assert result.status == "limit:max_total_tokens"  # tripped by the child's tokens after step 1
    assert result.state.steps[1].model is not None and len(result.state.steps) == 2


@pytest.mark.anyio
async def test_cancelling_the_parent_cancels_its_children(agent_def: Any) -> None:
    parent = agent_def.build()
    seen: list[Any] = []
    with anyio.move_on_after(0.15):  # the children are inside their 0.25 s research calls
        async for event in parent.stream("researcher:cats;researcher:dogs"):
            seen.append(event)
    assert any(isinstance(e, ev.SubAgentEvent) for e in seen)
    assert agent_def.WINDOWS == []  # neither research call ran to its end
    await anyio.sleep(0.3)
    assert agent_def.WINDOWS == []  # and none was left running in the background


def test_a_durable_parent_resumes_its_paused_child_from_the_store(agent_def: Any, tmp_path: Path) -> None:
    parent = agent_def.build()
    parent.store = open_store(tmp_path / "runs")
    paused = parent.run_sync("writer:publish stored")
    [pending] = paused.pending_approvals
    fresh = agent_def.build()  # as a new process would: the same definitions, the run from the store
    fresh.store = parent.store
    done = anyio.run(lambda: fresh.resume(paused.state.run_id, approvals={pending.id: True}))
    assert done.status == "completed" and done.output == "publish: published 6 chars"
    assert (tmp_path / "published.txt").read_text() == "stored\n"


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_children_on_the_embedded_agentkit_tiny_share_one_engine(agent_def: Any) -> None:
    """Real-model children: two agentkit-tiny runs delegated in one block are served by the one engine
    at the same time, and their real token counts (prefilled, cached) are summed into the parent's."""
    from agentkit.backends import resolve
    from agentkit.tiny.tools import calculator

    tiny = resolve("embedded:tiny")
    adder = Agent(
        tiny,
        [calculator],
        instructions="You are a helpful assistant that solves tasks with tools. Answer with the final "
        "result.",  # the system prompt agentkit-tiny's calculator episodes were rendered with
    )
    sums = [("1234", "4321", "5555"), ("90178", "39349", "129527")]
    tasks = ";".join(f"adder:Please calculate the sum of {a} and {b}." for a, b, _ in sums)
    parent = Agent(ScriptedModel([agent_def.parent_policy] * 3), [adder.as_tool("adder", "Adds.")])
    events = [e async for e in parent.stream(tasks)]
    result = events[-1].result
    assert result.status == "completed"
    assert result.output == " | ".join(f"The answer is {c}." for _, _, c in sums)
    sub = [(i, e.call_id, e.event) for i, e in enumerate(events) if isinstance(e, ev.SubAgentEvent)]
    first = {cid: min(i for i, c, _ in sub if c == cid) for cid in ("call_1_0", "call_1_1")}
    ended = {c: i for i, c, x in sub if isinstance(x, ev.RunEnd)}
    assert first["call_1_0"] < ended["call_1_1"] and first["call_1_1"] < ended["call_1_0"]
    kids = child_ends(events)
    assert all(k.usage.requests == 2 and k.usage.prefilled_tokens > 0 for k in kids.values())
    own = own_usage(result.state)
    for name in SUMMED:
        assert getattr(result.usage, name) == own[name] + sum(getattr(k.usage, name) for k in kids.values())
    assert tiny.kept_state_bytes() == 0  # finished children's KV states were let go


TINY_SRC = textwrap.dedent(
    """
    from agentkit.agent import Agent
    from agentkit.backends import ScriptedModel, resolve
    from agentkit.tiny.tools import calculator
    from agentkit.tools.tool import Tool

    import agent_def

    INSTRUCTIONS = "You are a helpful assistant that solves tasks with tools. Answer with the final result."

    def build():
        asks = Tool(calculator.function, requires_approval=True)
        adder = Agent(resolve("embedded:tiny"), [asks], instructions=INSTRUCTIONS)
        return Agent(ScriptedModel([agent_def.parent_policy] * 3), [adder.as_tool("adder", "Adds.")])
    """
)

TINY_RESUME_SRC = textwrap.dedent(
    """
    import json, sys
    import anyio
    from agentkit import events as ev
    import tiny_def

    async def main():
        parent = tiny_def.build()
        state = parent.load_session(sys.argv[1])
        child = None
        async for e in parent.stream(state=state, approvals=json.loads(sys.argv[2])):
            if isinstance(e, ev.SubAgentEvent) and isinstance(e.event, ev.RunEnd):
                child = e.event.result
            if isinstance(e, ev.RunEnd):
                result = e.result
        steps = [s.to_dict() for s in child.state.steps]
        print(json.dumps({"status": result.status, "output": result.output, "child_steps": steps}))

    anyio.run(main)
    """
)


def test_a_paused_embedded_child_resumes_in_a_new_process_from_its_saved_kv_state(
    agent_def: Any, tmp_path: Path
) -> None:
    """agentkit-tiny as the child: its approval pauses the parent; the session saves the child's KV state
    beside it, and the resumed child in a new process prefills only the tool result's turn."""
    from agentkit.session import SessionError

    (tmp_path / "tiny_def.py").write_text(TINY_SRC)
    sys.path.insert(0, str(tmp_path))
    try:
        tiny_def = importlib.import_module("tiny_def")
    finally:
        sys.path.remove(str(tmp_path))
    parent = tiny_def.build()
    paused = parent.run_sync("adder:Please calculate the sum of 1234 and 4321.")
    [pending] = paused.pending_approvals
    assert (pending.id, pending.arguments) == ("call_1_0/call_1_0", {"expression": "1234 + 4321"})
    path = parent.save_session(tmp_path / "paused.json", paused)
    child = paused.state.children[0]
    assert child.has_kv and (tmp_path / "paused.json.children.kv").stat().st_size > 0
    context = child.usage.context_tokens
    assert context > 300

    (tmp_path / "resume.py").write_text(TINY_RESUME_SRC)
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "resume.py"), str(path), json.dumps({pending.id: True})],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = json.loads(proc.stdout.strip().splitlines()[-1])
    assert done["status"] == "completed" and done["output"] == "The answer is 5555."
    resumed = done["child_steps"][len(child.steps)]["model"]
    assert resumed["cached_tokens"] == context  # the child's whole saved context came from its KV state
    assert 0 < resumed["prefilled_tokens"] == resumed["prompt_tokens"] - context < 20  # the result turn

    (tmp_path / "paused.json.children.kv").write_bytes(b"\x00\x00\x00\x02{}")
    with pytest.raises(SessionError, match=r"children\.kv"):
        tiny_def.build().load_session(path)
