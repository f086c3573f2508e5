"""Approvals pause a run as plain JSON that another process resumes; cancellation leaves nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import anyio
import docker
import pytest
from agentkit.tools.context import RunContext
from agentkit.tools.tool import tool

from agentkit.agent import Agent, RunError
from agentkit.backends import ScriptedModel
from agentkit.dsml import encode_messages, render_assistant_turn
from agentkit.events import ApprovalRequired, ToolResult
from agentkit.messages import ToolMessage, message_to_dict
from agentkit.session import RunState, save_session


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def out(content: str = "", calls: list[tuple[str, dict[str, Any]]] = ()) -> str:  # type: ignore[assignment]
    msg = {
        "reasoning_content": "r",
        "content": content,
        "tool_calls": [
            {"type": "function", "function": {"name": n, "arguments": json.dumps(a)}} for n, a in calls
        ],
    }
    return render_assistant_turn(msg, "thinking")


# The agent definition both processes share: tools are code, the paused run is data.
AGENT_SRC = textwrap.dedent(
    """
    from pathlib import Path
    from agentkit.tools.tool import tool

    @tool(requires_approval=True)
    def delete_file(path: str) -> str:
        \"\"\"Delete a file (needs a human's OK).\"\"\"
        Path(path).unlink()
        return f"deleted {path}"

    @tool
    def list_dir(path: str) -> str:
        \"\"\"List a directory.\"\"\"
        return ",".join(sorted(p.name for p in Path(path).iterdir()))
    """
)

RESUME_SRC = textwrap.dedent(
    """
    import json, sys
    from agentkit.agent import Agent
    from agentkit.backends import ScriptedModel
    from agentkit.session import load_session
    from agent_def import delete_file, list_dir

    state_path, outputs_path, decisions = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    state, _ = load_session(state_path)
    model = ScriptedModel(json.loads(open(outputs_path).read()))
    agent = Agent(model, [delete_file, list_dir])
    result = agent.run_sync(state=state, approvals=decisions)
    print(json.dumps({"status": result.status, "output": result.output, "state": result.state.to_json()}))
    """
)


def _load_agent_def(tmp_path: Path) -> Any:
    (tmp_path / "agent_def.py").write_text(AGENT_SRC)
    sys.path.insert(0, str(tmp_path))
    try:
        import importlib

        import agent_def  # type: ignore[import-not-found]

        return importlib.reload(agent_def)
    finally:
        sys.path.remove(str(tmp_path))


@pytest.mark.parametrize("approve", [True, False])
def test_pause_and_resume_in_another_process(tmp_path: Path, approve: bool) -> None:
    mod = _load_agent_def(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    (work / "a.txt").write_text("a")
    (work / "b.txt").write_text("b")
    first = out("", [("list_dir", {"path": str(work)}), ("delete_file", {"path": str(work / "a.txt")})])
    model = ScriptedModel([first])
    agent = Agent(model, [mod.delete_file, mod.list_dir])
    result = agent.run_sync("clean up a.txt")
    assert result.status == "paused"
    [pending] = result.pending_approvals
    assert pending.name == "delete_file" and (work / "a.txt").exists()
    # the unapproved-free call of the same block already ran and is kept in the state
    assert result.state.block_results[0].content == "a.txt,b.txt"
    state_file = save_session(tmp_path / "run.json", result.state)

    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps([out("deleted it" if approve else "left it")]))
    decisions = {pending.id: True if approve else "not today"}
    (tmp_path / "resume.py").write_text(RESUME_SRC)
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "resume.py"), str(state_file), str(outputs), json.dumps(decisions)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    done = json.loads(proc.stdout.strip().splitlines()[-1])
    assert done["status"] == "completed"
    assert (work / "a.txt").exists() is (not approve)
    final = RunState.from_json(done["state"])
    tool_msgs = [m for m in final.messages if isinstance(m, ToolMessage)]
    assert tool_msgs[0].content == "a.txt,b.txt"
    if approve:
        assert tool_msgs[1].content == f"deleted {work / 'a.txt'}"
    else:
        assert "not approved: not today" in tool_msgs[1].content
    # the resumed transcript is still the encoder's rendering of the messages
    text = encode_messages([message_to_dict(m) for m in final.messages], "thinking", drop_thinking=False)
    assert final.transcript.text == text


@pytest.mark.anyio
async def test_missing_decisions_are_refused_without_losing_the_run(tmp_path: Path) -> None:
    @tool(requires_approval=True)
    def risky(x: int) -> int:
        """Needs approval."""
        return x

    model = ScriptedModel([out("", [("risky", {"x": 1}), ("risky", {"x": 2})]), out("ok")])
    agent = Agent(model, [risky])
    events = [e async for e in agent.stream("go")]
    assert sum(isinstance(e, ApprovalRequired) for e in events) == 2
    paused = events[-1].result  # type: ignore[union-attr]
    saved = paused.state.to_json()
    first_id, second_id = (c.id for c in paused.pending_approvals)
    with pytest.raises(RunError, match=second_id):
        await agent.run(state=RunState.from_json(saved), approvals={first_id: True})
    with pytest.raises(RunError, match="paused"):
        await agent.run("new task", state=RunState.from_json(saved))
    with pytest.raises(RunError, match="not pending"):
        await agent.run(state=saved, approvals={first_id: True, second_id: True, "call_9_9": True})
    with pytest.raises(RunError, match="True, False or a denial reason"):
        await agent.run(state=saved, approvals={first_id: True, second_id: 1})  # type: ignore[dict-item]
    result = await agent.run(state=saved, approvals={first_id: True, second_id: False})
    assert result.ok
    contents = [m.content for m in result.messages if isinstance(m, ToolMessage)]
    assert contents[0] == "1" and "not approved" in contents[1]


@pytest.mark.anyio
async def test_in_process_approver_callback() -> None:
    asked: list[str] = []

    @tool(requires_approval=True)
    def pay(amount: int) -> str:
        """Pay."""
        return f"paid {amount}"

    async def approver(call: Any) -> bool | str:
        asked.append(call.name)
        return True if call.arguments["amount"] < 100 else "too much"

    model = ScriptedModel([out("", [("pay", {"amount": 5}), ("pay", {"amount": 500})]), out("ok")])
    result = await Agent(model, [pay], approver=approver).run("go")
    contents = [m.content for m in result.messages if isinstance(m, ToolMessage)]
    assert contents[0] == "paid 5" and "too much" in contents[1] and asked == ["pay", "pay"]


def _containers_of(session: str) -> list[Any]:
    client = docker.from_env()
    try:
        return list(
            client.containers.list(all=True, filters={"label": f"io.agentkit.sandbox.session={session}"})
        )
    finally:
        client.close()


@pytest.mark.docker
@pytest.mark.anyio
async def test_cancel_run_with_docker_sandbox_leaves_no_container(anyio_backend: str) -> None:
    started = anyio.Event()
    seen: dict[str, Any] = {}

    @tool
    async def nap(ctx: RunContext[None]) -> str:
        """Sleep inside the sandbox."""
        sb = ctx.require_sandbox()
        seen["session"] = sb.session  # type: ignore[attr-defined]
        started.set()
        r = await sb.exec("sleep 120")
        return r.stdout

    model = ScriptedModel([out("", [("nap", {}), ("nap", {})]), out("never")])
    agent = Agent(model, [nap], sandbox="docker")
    results: list[Any] = []
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            async for e in agent.stream("sleep"):
                if isinstance(e, ToolResult):
                    results.append(e)

        tg.start_soon(run)
        await started.wait()
        assert _containers_of(seen["session"])  # it is really running
        tg.cancel_scope.cancel()
    assert results == []  # the tools never completed
    assert _containers_of(seen["session"]) == []


CTRL_C_SRC = textwrap.dedent(
    """
    import json, sys
    from agentkit.agent import Agent
    from agentkit.dsml import render_assistant_turn
    from agentkit.backends import ScriptedModel
    from agentkit.tools.context import RunContext
    from agentkit.tools.tool import tool

    @tool
    async def nap(ctx: RunContext[None]) -> str:
        \"\"\"Sleep inside the sandbox.\"\"\"
        sb = ctx.require_sandbox()
        print("SESSION", sb.session, flush=True)
        await sb.exec("sleep 120")
        return "woke"

    call = {"type": "function", "function": {"name": "nap", "arguments": "{}"}}
    block = render_assistant_turn({"reasoning_content": "", "content": "", "tool_calls": [call]}, "thinking")
    agent = Agent(ScriptedModel([block, block]), [nap], sandbox="docker")
    try:
        agent.run_sync("sleep")
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
        sys.exit(130)
    """
)


@pytest.mark.docker
def test_ctrl_c_closes_the_sandbox(tmp_path: Path) -> None:
    import signal

    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C_SRC)
    # SIGINT back to its default in the child: a suite started in the background by a non-interactive
    # shell (`... &`) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("SESSION "), line + proc.stderr.read() if proc.stderr else line
        session = line.split()[1]
        assert _containers_of(session)
        # Ctrl-C once the command runs in the container ("SESSION" prints just before the exec starts)
        deadline = time.monotonic() + 60
        while not any("sleep 120" in str(c.top()) for c in _containers_of(session) if c.status == "running"):
            assert time.monotonic() < deadline, "the sandbox never started the command"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "INTERRUPTED" in rest, err[-2000:]
    assert proc.returncode == 130
    assert _containers_of(session) == []
