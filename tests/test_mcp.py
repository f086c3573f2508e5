"""MCP tools in the agent loop, against a real MCP server (tests/fixtures/mcp/server.py, built with the
official SDK) over stdio and over streamable HTTP on 127.0.0.1.

The model is scripted; everything between it and the server is real: the tools section rendered from
the server's schemas, DSML calls dispatched on the eager path, the server's results rendered as tool
results. Process lifetime is checked from the host, by pid.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from agentkit.tools.tool import tool

from agentkit import events as ev
from agentkit.agent import Agent
from agentkit.backends import ModelRequest, ScriptedModel
from agentkit.backends.scripted import scripted_turn
from agentkit.dsml import BOS, DSML, EOS, USER, parse_completion
from agentkit.mcp import MCPConnectError, MCPServer, MCPToolNameError, MCPUnavailableError
from agentkit.mcp.tool import coerce_arguments, defuse, render_result
from agentkit.messages import ToolMessage
from agentkit.toolsets import ToolNameConflict

SERVER = Path(__file__).parent / "fixtures" / "mcp" / "server.py"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "zombie" in status.read_text())


def pids(pidfile: Path) -> list[int]:
    return [int(x) for x in pidfile.read_text().split()] if pidfile.exists() else []


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


def stdio_server(pidfile: Path, *extra: str, **options: Any) -> MCPServer:
    return MCPServer.stdio(
        sys.executable,
        [str(SERVER), *extra],
        {"MCP_PIDFILE": str(pidfile)},
        stderr=open(os.devnull, "w"),
        **options,
    )


@pytest.fixture
def http_url(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    pidfile = tmp_path / "http.pid"
    env = {**os.environ, "MCP_PIDFILE": str(pidfile)}
    proc = subprocess.Popen(
        [sys.executable, str(SERVER), "--http"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().split()[1])
        yield f"http://127.0.0.1:{port}/mcp", pidfile
    finally:
        proc.terminate()
        proc.wait(10)


def say(req: ModelRequest, calls: list[tuple[str, dict[str, Any]]] = (), content: str = "") -> str:  # type: ignore[assignment]
    return scripted_turn("thinking", content, calls, thinking=req.thinking)


def results(result: Any) -> dict[str, ToolMessage]:
    return {m.name: m for m in result.messages if isinstance(m, ToolMessage)}


# ------------------------------------------------------------------------------ both transports


async def check_round_trip(server: MCPServer) -> Any:
    """One block of four parallel calls: plain, structured, image + text, a tool error."""
    calls = [
        ("add", {"a": 2, "b": "40"}),  # "40" as DSML raw text: coerced to the schema's integer
        ("point", {"x": 3}),
        ("picture", {}),
        ("refuse", {"reason": "no"}),
    ]
    model = ScriptedModel([lambda r: say(r, calls), lambda r: say(r, content="done")])
    async with Agent(model, tools=[server]) as agent:
        result = await agent.run("use the tools")
        prompt = model.prompts[0].prompt or ""
        # the server's schemas, as the server wrote them, in the V4 tools section
        add_schema = next(s for s in agent.tool_schemas if s["function"]["name"] == "add")
        assert json.dumps(add_schema["function"], ensure_ascii=False) in prompt
        assert add_schema["function"]["parameters"]["properties"]["a"]["type"] == "integer"
    assert result.status == "completed"
    got = results(result)
    assert got["add"].content == "42" and not got["add"].is_error
    assert json.loads(got["point"].content) == {"x": 3, "y": 6}
    assert got["picture"].content == "a red dot\n\n[image: image/png, 70 bytes]"
    assert got["refuse"].is_error and "refused: no" in got["refuse"].content
    kinds = {t.name: t.error_kind for t in result.steps[0].tools}
    assert kinds == {"add": None, "point": None, "picture": None, "refuse": "error"}
    return result


@pytest.mark.anyio
async def test_stdio_server_tools_in_a_run_and_process_gone_after(tmp_path: Path) -> None:
    pidfile = tmp_path / "s.pid"
    server = stdio_server(pidfile)
    assert not server.connected and pids(pidfile) == []  # lazy: nothing runs before the first run
    await check_round_trip(server)
    (pid,) = pids(pidfile)
    assert wait_gone(pid), "the server process outlived the agent"


@pytest.mark.anyio
async def test_http_server_tools_in_a_run(http_url: tuple[str, Path]) -> None:
    url, _ = http_url
    server = MCPServer.http(url, {"X-Agent": "agentkit-test"})
    await check_round_trip(server)
    async with server:  # closed with the agent above; a later use reconnects
        sent = await server.call_tool("header", {"name": "X-Agent"})
        assert sent.content[0].text == "agentkit-test" and server.connects == 2


def test_http_server_gone_mid_call_then_back(tmp_path: Path) -> None:
    """Over HTTP the server is not ours to restart: the call cut off is a readable error, and once the
    server is back the next call opens a new session."""

    def start(port: int = 0) -> tuple[subprocess.Popen[str], int]:
        cmd = [sys.executable, str(SERVER), "--http", "--port", str(port)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert proc.stdout is not None
        return proc, int(proc.stdout.readline().split()[1])

    first, port = start()
    second = None
    try:
        server = MCPServer.http(f"http://127.0.0.1:{port}/mcp")
        model = ScriptedModel(
            [
                lambda r: say(r, [("crash", {})]),
                lambda r: say(r, content="it crashed"),
                lambda r: say(r, [("add", {"a": 1, "b": 1})]),
                lambda r: say(r, content="2"),
            ]
        )
        with Agent(model, tools=[server]) as agent:
            cut = results(agent.run_sync("crash"))["crash"]
            assert (
                cut.is_error and "ended while running `crash`" in cut.content and "reconnects" in cut.content
            )
            assert first.wait(10) == 3
            second, _ = start(port)
            assert results(agent.run_sync("add"))["add"].content == "2"
            assert server.connects == 2
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(10)


# ------------------------------------------------------------------------------ lifetime


def test_shared_across_run_sync_calls_then_closed(tmp_path: Path) -> None:
    """`run_sync` makes an event loop per call; the server (one process) serves them all."""
    pidfile = tmp_path / "s.pid"
    server = stdio_server(pidfile)
    model = ScriptedModel([lambda r: say(r, [("pid", {})]), lambda r: say(r, content="ok")] * 2)
    agent = Agent(model, tools=[server])
    first = agent.run_sync("pid?")
    second = agent.run_sync("pid again?")
    (pid,) = pids(pidfile)
    assert results(first)["pid"].content == results(second)["pid"].content == str(pid)
    assert server.connects == 1 and alive(pid)
    agent.close()
    assert not alive(pid)


@pytest.mark.anyio
async def test_crash_mid_call_gives_a_readable_error_and_the_next_call_restarts(tmp_path: Path) -> None:
    pidfile = tmp_path / "s.pid"
    server = stdio_server(pidfile)
    model = ScriptedModel(
        [
            lambda r: say(r, [("crash", {})]),
            lambda r: say(r, [("pid", {})]),
            lambda r: say(r, content="ok"),
            lambda r: say(r, [("pid", {})]),
            lambda r: say(r, content="ok"),
        ]
    )
    async with Agent(model, tools=[server]) as agent:
        result = await agent.run("crash it")
        crashed = result.messages[3]
        assert isinstance(crashed, ToolMessage) and crashed.is_error
        assert "ended while running `crash`" in crashed.content and "restarts the server" in crashed.content
        first, second = pids(pidfile)
        assert results(result)["pid"].content == str(second) and first != second
        assert server.connects == 2 and not alive(first)
        # killed while idle: the next call finds the session ended and reconnects first, no error
        os.kill(second, signal.SIGKILL)
        assert wait_gone(second)
        for _ in range(500):  # its end is seen on the idle session (EOF), within moments
            if not server.connected:
                break
            await anyio.sleep(0.02)
        assert not server.connected
        again = await agent.run("pid?")
        third = pids(pidfile)[-1]
        assert results(again)["pid"].content == str(third) and not results(again)["pid"].is_error
        assert server.connects == 3
    assert result.status == "completed"
    assert wait_gone(third)


@pytest.mark.anyio
async def test_no_orphan_after_cancellation_or_an_exception(tmp_path: Path) -> None:
    pidfile = tmp_path / "s.pid"
    server = stdio_server(pidfile)
    started = False
    model = ScriptedModel([lambda r: say(r, [("nap", {"seconds": 30})])] * 2)
    with pytest.raises(RuntimeError, match="app failed"):
        async with Agent(model, tools=[server]) as agent:
            await server.list_tools()  # started before the clock below, however loaded the machine
            with anyio.move_on_after(1.5) as scope:  # cancelled mid-call: the run goes, the server stays
                async for event in agent.stream("sleep"):
                    started = started or isinstance(event, ev.ToolCallEnd)
            assert scope.cancelled_caught and started
            (pid,) = pids(pidfile)
            assert alive(pid)
            raise RuntimeError("app failed")
    assert not alive(pid)


def test_no_orphan_when_the_host_process_never_closes_the_agent(tmp_path: Path) -> None:
    """An app that dies of an uncaught exception without closing: the server is stopped at exit."""
    pidfile = tmp_path / "s.pid"
    script = textwrap.dedent(
        f"""
        import os, sys
        from agentkit.agent import Agent
        from agentkit.backends import ScriptedModel
        from agentkit.backends.scripted import scripted_turn
        from agentkit.mcp import MCPServer
        server = MCPServer.stdio(sys.executable, [{str(SERVER)!r}], {{"MCP_PIDFILE": {str(pidfile)!r}}})
        model = ScriptedModel([scripted_turn("t", "", [("pid", {{}})]), scripted_turn("t", "ok")])
        agent = Agent(model, tools=[server])
        print(agent.run_sync("go").status, flush=True)
        raise SystemExit("boom: the app never closes its agent")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "completed", proc.stderr
    (pid,) = pids(pidfile)
    assert not alive(pid)


@pytest.mark.anyio
async def test_mcp_calls_can_require_approval(tmp_path: Path) -> None:
    server = stdio_server(tmp_path / "s.pid", requires_approval={"add"})
    model = ScriptedModel(
        [lambda r: say(r, [("add", {"a": 1, "b": 2}), ("pid", {})]), lambda r: say(r, content="ok")]
    )
    async with Agent(model, tools=[server]) as agent:
        paused = await agent.run("add")
        assert paused.status == "paused" and [c.name for c in paused.pending_approvals] == ["add"]
        (call,) = paused.pending_approvals
        done = await agent.run(state=paused.state.to_json(), approvals={call.id: True})
    assert done.status == "completed" and results(done)["add"].content == "3"


def test_a_server_that_never_answers_is_stopped_on_timeout_or_cancellation(tmp_path: Path) -> None:
    """Connecting is bounded (`connect_timeout`), and a run cancelled while its server starts leaves no
    process behind either."""
    pidfile = tmp_path / "silent.pid"
    silent = tmp_path / "silent.py"
    silent.write_text(
        "import os, sys, time\nopen(sys.argv[1], 'a').write(f'{os.getpid()}\\n')\ntime.sleep(60)\n"
    )

    def server(**options: Any) -> MCPServer:
        return MCPServer.stdio(sys.executable, [str(silent), str(pidfile)], **options)

    agent = Agent(ScriptedModel([]), tools=[server(connect_timeout=1.5)])
    with pytest.raises(MCPConnectError, match=r"did not finish connecting within 1\.5 s"):
        agent.run_sync("x")
    (first,) = pids(pidfile)
    assert wait_gone(first)

    async def cancelled() -> None:
        agent = Agent(ScriptedModel([]), tools=[server()])
        async with agent, anyio.create_task_group() as tg:
            tg.start_soon(agent.run, "x")
            for _ in range(1000):  # cancel once the server process exists, while it "starts"
                if len(pids(pidfile)) == 2:
                    break
                await anyio.sleep(0.02)
            tg.cancel_scope.cancel()

    anyio.run(cancelled)
    second = pids(pidfile)[-1]
    assert second != first and wait_gone(second)


# ------------------------------------------------------------------------------ tool-list changes


@pytest.mark.anyio
async def test_tool_list_change_is_picked_up_by_the_next_run(tmp_path: Path) -> None:
    server = stdio_server(tmp_path / "s.pid")
    model = ScriptedModel(
        [
            lambda r: say(r, [("grow", {"name": "mirror"})]),
            lambda r: say(r, content="grown"),
            lambda r: say(r, [("mirror", {"word": "stressed"})]),
            lambda r: say(r, content="done"),
        ]
    )
    async with Agent(model, tools=[server]) as agent:
        first = await agent.run("grow")
        assert "mirror" not in (model.prompts[0].prompt or "")
        second = await agent.run("use it")
        assert '"name": "mirror"' in (model.prompts[2].prompt or "")
        assert "mirror" in agent.tools
    assert results(first)["grow"].content == "added mirror"
    assert results(second)["mirror"].content == "desserts"


@pytest.mark.anyio
async def test_a_continued_conversation_is_told_of_tool_changes(tmp_path: Path) -> None:
    """A follow-up on the same state keeps its old system prompt (append-only), so the change is announced
    in the next user turn, in the tools section's format, once."""
    from agentkit.toolsets import TOOLS_CHANGED

    server = stdio_server(tmp_path / "s.pid")
    model = ScriptedModel(
        [
            lambda r: say(r, [("grow", {"name": "mirror"})]),
            lambda r: say(r, content="grown"),
            lambda r: say(r, [("mirror", {"word": "live"})]),
            lambda r: say(r, content="evil"),
            lambda r: say(r, content="still here"),
        ]
    )
    async with Agent(model, tools=[server]) as agent:
        first = await agent.run("grow")
        second = await agent.run("now mirror 'live'", state=first.state)
        third = await agent.run("anything new?", state=second.state)
    note = model.prompts[2].suffix
    assert TOOLS_CHANGED in note and note.index(TOOLS_CHANGED) < note.index("now mirror 'live'")
    mirror = next(s for s in agent.tool_schemas if s["function"]["name"] == "mirror")
    assert json.dumps(mirror["function"], ensure_ascii=False) in note
    assert "No longer available" not in note
    assert results(second)["mirror"].content == "evil"
    assert TOOLS_CHANGED not in model.prompts[4].suffix and third.status == "completed"


# ------------------------------------------------------------------------------ 200 tools


@pytest.mark.anyio
async def test_200_tools_render_valid_dsml_and_report_prompt_size(tmp_path: Path) -> None:
    server = stdio_server(tmp_path / "s.pid", "--many", "200", prefix="gen")
    # one block calling a tool of each parameter kind the fixture generates (i % 7: int, str, float,
    # bool, list[int], dict[str, str], an enum), from the far end of the list too
    values: list[Any] = [5, "text with <angle> & 'quotes'", 2.5, True, [1, 2], {"k": "v"}, "b"]
    calls = [(f"gen_gen_tool-{193 + i:03d}", {"value": values[(193 + i) % 7]}) for i in range(7)]
    calls.append(("gen_gen_tool-138", {"value": {"k": "v"}, "note": "from the model"}))
    model = ScriptedModel([lambda r: say(r, calls), lambda r: say(r, content="done")])
    async with Agent(model, tools=[server]) as agent:
        result = await agent.run("call them")
        prompt = model.prompts[0].prompt or ""
        assert len(agent.tools) == 209
    # each tool is one JSON line of the tools section, and reads back as exactly what was listed
    lines = [ln for ln in prompt.splitlines() if ln.startswith('{"name": ')]
    assert [json.loads(ln) for ln in lines] == [s["function"] for s in agent.tool_schemas]
    # hostile description text was defused: no special token beyond the prompt's own structure
    assert prompt.count(EOS) == 0 and prompt.count(USER) == 1 and prompt.count(BOS) == 1
    assert not any(DSML in ln or "<think>" in ln for ln in lines)
    hostile = next(s for s in agent.tool_schemas if s["function"]["name"] == "gen_gen_tool-007")
    assert "<|end▁of▁sentence|>" in hostile["function"]["description"]
    # the model's block parses back strictly to the same calls, and the server ran each one
    written = (model.prompts[1].prompt or "").split(prompt, 1)[1].split(EOS)[0]
    parsed = parse_completion(written, "thinking", strict=True)
    assert [(c.name, c.arguments) for c in parsed.tool_calls] == calls
    got = {m.name: m for m in result.messages if isinstance(m, ToolMessage)}
    for name, args in calls:
        i = int(name.rsplit("-", 1)[1])
        assert not got[name].is_error, got[name].content
        assert got[name].content == f"tool {i}: {args['value']!r} {args.get('note', '')}".strip()
    chars = len(prompt)
    print(f"\n200-tool MCP prompt: {chars} chars, {round(chars / len(lines))} chars per tool")
    assert chars < 200 * 600  # ~300 chars per generated tool: a size report, not a budget


# ------------------------------------------------------------------------------ timeouts, bad input


@pytest.mark.anyio
async def test_call_timeout_and_run_cancellation_become_results(tmp_path: Path) -> None:
    server = stdio_server(tmp_path / "s.pid", timeout=0.5)
    async with server:
        (nap,) = [t for t in await server.list_tools() if t.name == "nap"]
        out = await nap.invoke({"seconds": 2})
        assert out.is_error and out.error_kind == "timeout" and "timed out after 0.5 s" in out.content
        assert (await nap.invoke({"seconds": "0.01"})).content == "slept 0.01"
    # the run's wall-time limit cancels an MCP call in flight like any tool; the run then answers
    from agentkit.limits import Limits

    model = ScriptedModel([lambda r: say(r, [("nap", {"seconds": 30})]), lambda r: say(r, content="gave up")])
    async with Agent(
        model, tools=[stdio_server(tmp_path / "s.pid")], limits=Limits(max_wall_time_s=1.5)
    ) as agent:
        result = await agent.run("nap")
    cut = results(result)["nap"]
    assert cut.is_error and "was cancelled (the run's wall-time limit was reached)" in cut.content
    assert result.status == "limit:max_wall_time_s" and result.text == "gave up"


def test_stderr_without_a_file_descriptor_is_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a notebook sys.stderr may have no descriptor to give a subprocess: the server's log is dropped."""
    import io

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    model = ScriptedModel([lambda r: say(r, [("add", {"a": 1, "b": 1})]), lambda r: say(r, content="2")])
    with Agent(model, tools=[MCPServer.stdio(sys.executable, [str(SERVER)])]) as agent:
        assert results(agent.run_sync("add"))["add"].content == "2"


def test_bad_input_gets_typed_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a command"):
        MCPServer.stdio("")
    with pytest.raises(ValueError, match="http"):
        MCPServer.http("ftp://example.org/mcp")
    with pytest.raises(ValueError, match="timeout"):
        MCPServer.stdio("x", timeout=0)
    with pytest.raises(MCPToolNameError):
        MCPServer.stdio("x", prefix="bad prefix")
    missing = MCPServer.stdio(str(tmp_path / "no-such-server"), connect_timeout=10)
    agent = Agent(ScriptedModel([]), tools=[missing])
    with pytest.raises(MCPConnectError, match="could not connect to MCP server `no-such-server`"):
        agent.run_sync("anything")
    agent.close()
    assert issubclass(MCPUnavailableError, ImportError)


def test_a_tool_name_clash_is_a_typed_error(tmp_path: Path) -> None:
    @tool
    def add(a: int, b: int) -> int:
        """Local add."""
        return a + b

    agent = Agent(ScriptedModel([]), tools=[add, stdio_server(tmp_path / "s.pid")])
    try:
        with pytest.raises(ToolNameConflict, match="prefix="):
            agent.run_sync("x")
    finally:
        agent.close()


def test_import_stays_light() -> None:
    """Neither the MCP SDK (~0.8 s to import) nor OpenTelemetry load with agentkit or a server's config."""
    code = (
        "import sys, agentkit, agentkit.agent; from agentkit import MCPServer; MCPServer.stdio('x');"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mcp', 'opentelemetry')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------ pure helpers


def test_coerce_arguments_only_where_the_schema_says_and_json_agrees() -> None:
    schema = {
        "properties": {
            "n": {"type": "integer"},
            "f": {"type": "number"},
            "b": {"type": "boolean"},
            "xs": {"type": "array"},
            "s": {"type": "string"},
            "either": {"type": ["string", "integer"]},
        }
    }
    args = {"n": "3", "f": "2.5", "b": "true", "xs": "[1, 2]", "s": "7", "either": "7", "extra": "1"}
    assert coerce_arguments(args, schema) == {**args, "n": 3, "f": 2.5, "b": True, "xs": [1, 2]}
    assert coerce_arguments({"n": "3.5", "b": "1", "f": "NaN"}, schema) == {"n": "3.5", "b": "1", "f": "NaN"}


def test_render_result_blocks() -> None:
    from mcp.types import (
        AudioContent,
        BlobResourceContents,
        CallToolResult,
        EmbeddedResource,
        ResourceLink,
        TextResourceContents,
    )

    res = CallToolResult(
        content=[
            AudioContent(type="audio", data="AAAA", mime_type="audio/wav"),
            EmbeddedResource(
                type="resource", resource=TextResourceContents(uri="file:///a.txt", text="hello")
            ),
            EmbeddedResource(
                type="resource", resource=BlobResourceContents(uri="file:///b.bin", blob="AAAAAA==")
            ),
            ResourceLink(type="resource_link", name="c", uri="file:///c", description="the c file"),
        ],
        structured_content={"ok": True},
    )
    assert render_result(res).split("\n\n") == [
        '{"ok": true}',
        "[audio: audio/wav, 3 bytes]",
        "[resource file:///a.txt]\nhello",
        "[resource file:///b.bin: application/octet-stream, 4 bytes]",
        "[resource link c <file:///c>: the c file]",
    ]
    assert render_result(CallToolResult(content=[], is_error=True)).startswith("(the tool returned an error")
    assert defuse({"<｜User｜>": ["<think>", 1]}) == {"<|User|>": ["<think >", 1]}


def test_tool_names_are_sanitized_prefixed_and_checked() -> None:
    from types import SimpleNamespace

    def spec(name: str) -> Any:
        return SimpleNamespace(
            name=name, title=None, description="d", input_schema={}, output_schema=None, annotations=None
        )

    server = MCPServer.stdio("never-started", prefix="fs")  # nothing runs until a run lists its tools
    specs = [spec("read.file"), spec("git/status"), spec("ok-name_1")]
    tools = server._make_tools(specs)
    assert [(t.name, t.remote_name) for t in tools] == [
        ("fs_read_file", "read.file"),
        ("fs_git_status", "git/status"),
        ("fs_ok-name_1", "ok-name_1"),
    ]
    assert tools[0].parameters_schema == {"type": "object", "properties": {}}
    only = MCPServer.stdio("never-started", include={"read.file"}, requires_approval=lambda n: "file" in n)
    assert [(t.name, t.requires_approval) for t in only._make_tools(specs)] == [("read_file", True)]
    with pytest.raises(TypeError, match="not one string"):
        MCPServer.stdio("x", include="read.file")  # type: ignore[arg-type]
    with pytest.raises(MCPToolNameError, match="both become 'fs_a_b'"):
        server._make_tools([spec("a.b"), spec("a/b")])
    with pytest.raises(MCPToolNameError, match="1-64 characters"):
        server._make_tools([spec("x" * 70)])
    assert not server.connected


def test_any_toolset_works_and_removed_tools_are_announced() -> None:
    """The agent side needs only `list_tools` / `aclose` (the Toolset protocol), not MCP."""
    from agentkit.toolsets import TOOLS_CHANGED, is_toolset

    @tool
    def alpha(x: int) -> int:
        """Alpha."""
        return x

    @tool
    def beta(x: int) -> int:
        """Beta."""
        return -x

    class Shelf:
        def __init__(self) -> None:
            self.tools = [alpha, beta]
            self.closed = 0

        async def list_tools(self) -> list[Any]:
            return list(self.tools)

        async def aclose(self) -> None:
            self.closed += 1

    shelf = Shelf()
    assert is_toolset(shelf) and not is_toolset(alpha)
    model = ScriptedModel(
        [
            lambda r: say(r, [("beta", {"x": 2})]),
            lambda r: say(r, content="-2"),
            lambda r: say(r, content="ok"),
        ]
    )
    with Agent(model, tools=[shelf]) as agent:
        first = agent.run_sync("beta")
        shelf.tools = [alpha]
        agent.run_sync("and now?", state=first.state)
        assert list(agent.tools) == ["alpha"]
    assert shelf.closed == 1
    note = model.prompts[2].suffix
    assert TOOLS_CHANGED in note and "No longer available: beta." in note and '{"name": ' not in note
