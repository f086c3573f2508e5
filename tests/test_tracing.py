"""OpenTelemetry spans of a run, read back from the SDK's in-memory exporter.

The tracer provider is process-global and can be set once, so this module installs one SDK provider
(or adds its exporter to one already installed) and clears the exporter per test. The untraced case
(no provider at all) runs in a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import anyio
import pytest
from agentkit.tools.tool import tool
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from agentkit.agent import Agent
from agentkit.backends import ModelError, ModelRequest, ScriptedModel
from agentkit.backends.scripted import scripted_turn

EXPORTER = InMemorySpanExporter()
DEVNULL = open(os.devnull, "w")  # noqa: SIM115 (the MCP server's log, for the whole module)


@pytest.fixture(autouse=True)
def spans() -> Any:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
        provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    if not getattr(provider, "_agentkit_test_exporter", False):
        provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
        provider._agentkit_test_exporter = True  # type: ignore[attr-defined]
    EXPORTER.clear()
    yield EXPORTER
    EXPORTER.clear()


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def say(req: ModelRequest, calls: list[tuple[str, dict[str, Any]]] = (), content: str = "") -> str:  # type: ignore[assignment]
    return scripted_turn("thinking it over", content, calls, thinking=req.thinking)


def by_name(spans: list[ReadableSpan], prefix: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name.startswith(prefix)]


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def make_pair() -> tuple[Any, Any]:
    """Two tools that can only finish if they run at the same time."""
    gate: dict[str, anyio.Event] = {}

    @tool
    async def ping(n: int) -> str:
        """Wait for pong."""
        gate.setdefault("ping", anyio.Event()).set()
        await gate.setdefault("pong", anyio.Event()).wait()
        return f"ping {n}"

    @tool
    async def pong(n: int) -> str:
        """Wait for ping."""
        gate.setdefault("pong", anyio.Event()).set()
        await gate.setdefault("ping", anyio.Event()).wait()
        return f"pong {n}"

    return ping, pong


@pytest.mark.anyio
async def test_span_tree_attributes_and_parallel_tools_as_siblings(spans: InMemorySpanExporter) -> None:
    ping, pong = make_pair()
    model = ScriptedModel(
        [lambda r: say(r, [("ping", {"n": 1}), ("pong", {"n": 2})]), lambda r: say(r, content="done")],
        name="deepseek:deepseek-v4-flash",
    )
    agent = Agent(model, tools=[ping, pong], instructions="secret instructions")
    result = await agent.run("play ping pong with my secret data")
    assert result.status == "completed"
    got = list(spans.get_finished_spans())
    (run,) = by_name(got, "invoke_agent")
    steps = by_name(got, "agentkit.step")
    chats = by_name(got, "chat ")
    tools = by_name(got, "execute_tool")
    assert len(got) == 1 + 2 + 2 + 2
    assert run.parent is None and {parent_id(s) for s in steps} == {run.context.span_id}
    assert [s.attributes["agentkit.step"] for s in steps] == [1, 2]
    assert [parent_id(c) for c in chats] == [s.context.span_id for s in steps]
    # parallel calls: siblings under step 1, their lifetimes overlapping
    assert {parent_id(t) for t in tools} == {steps[0].context.span_id}
    a, b = sorted(tools, key=lambda s: s.start_time or 0)
    assert (b.start_time or 0) < (a.end_time or 0)
    assert {t.trace_id for t in (s.context for s in got)} == {run.context.trace_id}

    ra = run.attributes
    assert ra["gen_ai.operation.name"] == "invoke_agent"
    assert ra["gen_ai.provider.name"] == "deepseek" and ra["gen_ai.request.model"] == "deepseek-v4-flash"
    assert ra["gen_ai.conversation.id"] == result.state.run_id
    assert ra["agentkit.run.status"] == "completed" and ra["agentkit.run.steps"] == 2
    assert ra["gen_ai.usage.input_tokens"] == result.usage.prompt_tokens
    assert ra["gen_ai.usage.output_tokens"] == result.usage.completion_tokens
    assert ra["gen_ai.usage.cache_read.input_tokens"] == result.usage.cached_prompt_tokens > 0
    assert run.kind == trace.SpanKind.INTERNAL and {c.kind for c in chats} == {trace.SpanKind.CLIENT}
    for chat, record in zip(chats, result.steps, strict=True):
        ca = chat.attributes
        assert ca["gen_ai.operation.name"] == "chat"
        assert ca["gen_ai.request.model"] == "deepseek-v4-flash"
        assert record.model is not None
        assert ca["gen_ai.usage.input_tokens"] == record.model.prompt_tokens
        assert ca["gen_ai.usage.cache_read.input_tokens"] == record.model.cached_tokens
        assert ca["gen_ai.usage.output_tokens"] == record.model.completion_tokens
        assert tuple(ca["gen_ai.response.finish_reasons"]) == ("stop",)
    assert chats[1].attributes["gen_ai.usage.cache_read.input_tokens"] > 0  # step 2 reuses step 1's prefix
    calls = {c.name: c.id for c in result.messages[2].tool_calls}  # type: ignore[union-attr]
    for t in tools:
        ta = t.attributes
        assert ta["gen_ai.operation.name"] == "execute_tool" and ta["gen_ai.tool.type"] == "function"
        assert ta["gen_ai.tool.call.id"] == calls[ta["gen_ai.tool.name"]]
        assert t.status.status_code == StatusCode.UNSET
    # content is off by default: nothing of the prompt, the task or the tools' I/O in any span
    dumped = json.dumps([dict(s.attributes) for s in got])
    assert "secret" not in dumped and "ping 1" not in dumped and '"n"' not in dumped


@pytest.mark.anyio
@pytest.mark.parametrize("switch", ["attribute", "environment"])
async def test_content_capture_is_opt_in(
    spans: InMemorySpanExporter, switch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    @tool
    def shout(text: str) -> str:
        """Upper-case the text."""
        return text.upper()

    model = ScriptedModel(
        [lambda r: say(r, [("shout", {"text": "hi there"})]), lambda r: say(r, content="HI")]
    )
    agent = Agent(model, tools=[shout], instructions="be loud")
    if switch == "attribute":
        agent.trace_content = True
    else:
        monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    await agent.run("shout hi there")
    got = list(spans.get_finished_spans())
    (run,) = by_name(got, "invoke_agent")
    assert json.loads(str(run.attributes["gen_ai.system_instructions"])) == [
        {"type": "text", "content": "be loud"}
    ]
    first_chat = by_name(got, "chat ")[0]
    inputs = json.loads(str(first_chat.attributes["gen_ai.input.messages"]))
    assert inputs == [{"role": "user", "parts": [{"type": "text", "content": "shout hi there"}]}]
    outputs = json.loads(str(first_chat.attributes["gen_ai.output.messages"]))
    (call_part,) = [p for p in outputs[0]["parts"] if p["type"] == "tool_call"]
    assert call_part["name"] == "shout" and json.loads(call_part["arguments"]) == {"text": "hi there"}
    (tool_span,) = by_name(got, "execute_tool")
    assert json.loads(str(tool_span.attributes["gen_ai.tool.call.arguments"])) == {"text": "hi there"}
    assert tool_span.attributes["gen_ai.tool.call.result"] == "HI THERE"


@pytest.mark.anyio
async def test_errors_set_status_and_error_type(spans: InMemorySpanExporter) -> None:
    @tool
    def broken(x: int) -> str:
        """Fails."""
        raise ValueError(f"broken {x}")

    # one failing tool, then the model backend fails (the script runs out): the run raises
    model = ScriptedModel([lambda r: say(r, [("broken", {"x": 1}), ("broken", {"x": "nope"})])])
    with pytest.raises(ModelError):
        await Agent(model, tools=[broken]).run("break things")
    got = list(spans.get_finished_spans())
    failed_tool, bad_args = sorted(by_name(got, "execute_tool"), key=lambda s: s.start_time or 0)
    assert failed_tool.status.status_code == StatusCode.ERROR
    assert failed_tool.attributes["error.type"] == "exception"
    assert "broken 1" in (failed_tool.status.description or "")
    assert bad_args.attributes["error.type"] == "validation"
    ok_chat, failed_chat = by_name(got, "chat ")
    assert ok_chat.status.status_code == StatusCode.UNSET
    assert failed_chat.status.status_code == StatusCode.ERROR
    assert failed_chat.attributes["error.type"] == "ModelError"
    assert any(e.name == "exception" for e in failed_chat.events)
    (run,) = by_name(got, "invoke_agent")
    assert run.status.status_code == StatusCode.ERROR and run.attributes["error.type"] == "ModelError"
    assert by_name(got, "agentkit.step")[1].status.status_code == StatusCode.ERROR


@pytest.mark.anyio
async def test_mcp_tool_spans(spans: InMemorySpanExporter, tmp_path: Any) -> None:
    from pathlib import Path

    from agentkit.mcp import MCPServer

    server_py = Path(__file__).parent / "fixtures" / "mcp" / "server.py"
    server = MCPServer.stdio(sys.executable, [str(server_py)], stderr=DEVNULL)
    model = ScriptedModel([lambda r: say(r, [("add", {"a": 1, "b": 2})]), lambda r: say(r, content="3")])
    async with Agent(model, tools=[server]) as agent:
        await agent.run("add")
    got = list(spans.get_finished_spans())
    (span,) = by_name(got, "execute_tool")
    assert span.attributes["gen_ai.tool.type"] == "extension"
    assert span.attributes["gen_ai.tool.name"] == "add"
    # the MCP SDK's own request span (made on agentkit's connection thread) nests under the tool's span
    (request,) = [s for s in got if s.attributes.get("mcp.method.name") == "tools/call"]
    assert parent_id(request) == span.context.span_id


@pytest.mark.anyio
async def test_calls_approved_after_a_pause_are_traced_under_the_run(spans: InMemorySpanExporter) -> None:
    @tool(requires_approval=True)
    def launch(target: str) -> str:
        """Launch at a target."""
        return f"launched at {target}"

    model = ScriptedModel(
        [lambda r: say(r, [("launch", {"target": "moon"})]), lambda r: say(r, content="ok")]
    )
    agent = Agent(model, tools=[launch])
    paused = await agent.run("launch")
    (call,) = paused.pending_approvals
    spans.clear()
    await agent.run(state=paused.state, approvals={call.id: True})
    got = list(spans.get_finished_spans())
    (run,) = by_name(got, "invoke_agent")
    (tool_span,) = by_name(got, "execute_tool")
    assert parent_id(tool_span) == run.context.span_id
    assert tool_span.attributes["gen_ai.tool.call.id"] == call.id


@pytest.mark.anyio
async def test_a_sub_agent_run_nests_under_the_parent_tool_span(spans: InMemorySpanExporter) -> None:
    child = Agent(ScriptedModel([lambda r: say(r, content="42")], name="completions:http://x#child-model"))
    parent = Agent(
        ScriptedModel(
            [lambda r: say(r, [("expert", {"task": "the answer?"})]), lambda r: say(r, content="42")]
        ),
        tools=[child.as_tool("expert", "Knows the answer.")],
    )
    assert (await parent.run("ask the expert")).status == "completed"
    got = list(spans.get_finished_spans())
    runs = by_name(got, "invoke_agent")
    assert len(runs) == 2
    (tool_span,) = by_name(got, "execute_tool")
    top, nested = sorted(runs, key=lambda s: s.parent is not None)
    assert top.parent is None and parent_id(nested) == tool_span.context.span_id
    assert nested.attributes["gen_ai.request.model"] == "child-model"
    assert {s.context.trace_id for s in got} == {top.context.trace_id}


def test_no_sdk_no_spans_no_span_calls() -> None:
    """Without a provider a run gets NO_TRACE: the OpenTelemetry API is never asked for a span."""
    script = textwrap.dedent(
        """
        import sys
        from agentkit import tracing
        assert tracing._tracer() is None and "opentelemetry.trace" not in sys.modules  # not even imported
        from opentelemetry import trace
        calls = []
        for cls in (trace.ProxyTracer, trace.NoOpTracer):
            original = cls.start_span
            cls.start_span = lambda self, *a, _o=original, **k: (calls.append(1), _o(self, *a, **k))[1]
        from agentkit import tracing
        from agentkit.agent import Agent
        from agentkit.backends import ScriptedModel
        from agentkit.backends.scripted import scripted_turn
        from agentkit.tools.tool import tool
        import agentkit.loop as loop_mod

        @tool
        def noop(x: int) -> str:
            "Nothing."
            return "ok"

        seen = []
        original_init = loop_mod.Loop.__init__
        def init(self, *a, **k):
            original_init(self, *a, **k)
            seen.append(self.trace)
        loop_mod.Loop.__init__ = init
        model = ScriptedModel([scripted_turn("t", "", [("noop", {"x": 1})]), scripted_turn("t", "done")])
        assert Agent(model, tools=[noop]).run_sync("go").status == "completed"
        assert seen == [tracing.NO_TRACE], seen
        print("start_span calls:", len(calls))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "start_span calls: 0"
