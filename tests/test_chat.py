"""`agentkit chat` driven through a real pseudo-terminal (tests/_pty.py), as a person would drive it.

The main test runs the shipped agentkit-tiny on the embedded backend in two processes: the first shows a
tool call, has its approval answered at the prompt, saves the session and quits; the second loads it and
continues, prefilling none of the saved conversation again (the KV state came back with it), which the
chat's own report and the saved step records both show. Ctrl-C is tested against a real HTTP
`/v1/completions` server that streams slowly: the step stops (the server sees the client go), the
session is as before that message, and the next message continues it.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _pty import Terminal
from rich.console import Console

from agentkit.backends import ScriptedModel
from agentkit.backends.scripted import scripted_turn
from agentkit.chat import Chat, chat_tools
from agentkit.dsml import USER, render_assistant_turn
from agentkit.messages import ToolMessage, UserMessage
from agentkit.session import RunState

ROOT = Path(__file__).resolve().parents[1]
PROMPT = r"you> "


def chat_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "agentkit.cli", "chat", *args]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TERM": "xterm-256color", "AGENTKIT_MODEL": ""}


@pytest.fixture
def terminals() -> Iterator[list[Terminal]]:
    opened: list[Terminal] = []
    yield opened
    for t in opened:
        t.close()


def test_chat_tool_call_approval_save_and_load_in_a_new_process_prefills_nothing_again(
    tmp_path: Path, terminals: list[Terminal]
) -> None:
    args = ["--model", "embedded:tiny", "--tools", "calculator", "--approve", "calculator"]
    first = Terminal(chat_argv(*args), str(tmp_path), env())
    terminals.append(first)
    first.expect(PROMPT)
    first.send("Please calculate the sum of 1234 and 4321.\n")
    first.expect(r'call calculator\(expression="1234 \+ 4321"\)')  # shown as the model writes it
    first.expect(r"approve calculator\(\{\"expression\": \"1234 \+ 4321\"\}\) call_1_0\? ")
    assert "result calculator" not in first.text  # nothing ran before the answer
    first.send("y\n")
    first.expect(r"result calculator: 5555")
    first.expect(r"answer: The answer is 5555\.")
    first.expect(r"tokens: \d+ prompt")
    first.expect(PROMPT)
    first.send("/save s.json\n")
    first.expect(r"saved 5 messages to s\.json \+ KV state")
    first.expect(PROMPT)
    first.send("/quit\n")
    assert first.wait() == 0

    saved = RunState.from_json((tmp_path / "s.json").read_text())
    assert saved.status == "completed" and saved.output == "The answer is 5555."
    assert [m.content for m in saved.messages if isinstance(m, ToolMessage)] == ["5555"]
    assert (tmp_path / "s.json.kv").stat().st_size > 0
    context = saved.usage.context_tokens
    assert context == sum(len(s.token_ids or []) for s in saved.transcript.segments) > 300

    second = Terminal(chat_argv(*args), str(tmp_path), env())
    terminals.append(second)
    second.expect(PROMPT)
    second.send("/load s.json\n")
    second.expect(rf"loaded 5 messages, {context} tokens of context; KV state: restored")
    second.expect(PROMPT)
    second.send("Please calculate the sum of 11 and 31.\n")
    line = second.expect(
        r"tokens: (\d+) prompt \((\d+) cached, (\d+) prefilled\).*re-prefilled (\d+) of (\d+)"
    )
    assert (int(line[4]), int(line[5])) == (0, context)
    while True:  # whatever the model does next, answer its approvals until the prompt returns
        m = second.expect(rf"(approve \w+.*\? )|({PROMPT})")
        if m[2]:
            break
        second.send("n\n")
    second.send("/save s2.json\n")
    second.expect(r"saved \d+ messages")
    second.expect(PROMPT)
    second.send("/quit\n")
    assert second.wait() == 0

    after = RunState.from_json((tmp_path / "s2.json").read_text())
    assert after.run_id == saved.run_id
    first_call = after.steps[len(saved.steps)].model
    assert first_call is not None
    # The new process served every saved token from the restored KV state: it prefilled exactly the new
    # user turn (the segments appended before the model's first new output), nothing of the old part.
    new = after.transcript.segments[len(saved.transcript.segments) :]
    user_turn = []
    for seg in new:
        if seg.generated:
            break
        user_turn.extend(seg.token_ids or [])
    assert first_call.cached_tokens == context
    assert first_call.prefilled_tokens == len(user_turn) == first_call.prompt_tokens - context


# ------------------------------------------------------------------------------------------ Ctrl-C


class SlowServer:
    """A real `/v1/completions` SSE server: "slow" messages stream reasoning until the client leaves."""

    def __init__(self) -> None:
        self.prompts: list[str] = []
        self.disconnected = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def chunk(self, text: str, finish: str | None = None) -> None:
                body = {"choices": [{"index": 0, "text": text, "finish_reason": finish}]}
                if finish:
                    body["usage"] = {"prompt_tokens": 10, "completion_tokens": 5}
                self.wfile.write(f"data: {json.dumps(body)}\n\n".encode())
                self.wfile.flush()

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.prompts.append(body["prompt"])
                last_user = body["prompt"].rsplit(USER, 1)[1]
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                try:
                    if "slow" in last_user:
                        for _ in range(600):  # 30 s at most
                            self.chunk("slow ")
                            time.sleep(0.05)
                    msg = {"role": "assistant", "reasoning_content": "quick", "content": "quick answer"}
                    self.chunk(render_assistant_turn(msg, "thinking"))
                    self.chunk("", "stop")
                    self.wfile.write(b"data: [DONE]\n\n")
                except (BrokenPipeError, ConnectionResetError):
                    outer.disconnected.set()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def slow_server() -> Iterator[SlowServer]:
    srv = SlowServer()
    yield srv
    srv.server.shutdown()
    srv.server.server_close()


def test_ctrl_c_stops_the_step_and_keeps_the_session(
    tmp_path: Path, terminals: list[Terminal], slow_server: SlowServer
) -> None:
    term = Terminal(chat_argv("--model", f"completions:{slow_server.url}#v4"), str(tmp_path), env())
    terminals.append(term)
    term.expect(PROMPT)
    term.send("hello\n")
    term.expect(r"answer: quick answer")
    term.expect(PROMPT)
    term.send("slow please\n")
    term.expect(r"thinking: (slow ){3}")
    term.send("\x03")  # Ctrl-C: SIGINT from the terminal, mid-stream
    term.expect(r"interrupted: the step was stopped; the session is as it was before this message")
    term.expect(PROMPT)
    assert slow_server.disconnected.wait(10)  # the request really stopped: the client went away
    term.send("\x03")  # at the prompt Ctrl-C does not end the chat
    term.expect(r"Ctrl-D or /quit ends the chat")
    term.expect(PROMPT)
    term.send("quick one\n")
    term.expect(r"answer: quick answer")
    term.expect(PROMPT)
    term.send("/save s.json\n")
    term.expect(r"saved 5 messages to s\.json\n")
    term.expect(PROMPT)
    time.sleep(0.5)  # let readline take the terminal: an end-of-input typed ahead of it can be lost
    term.send("\x04")  # Ctrl-D ends the chat
    assert term.wait() == 0

    state = RunState.from_json((tmp_path / "s.json").read_text())
    assert [m.content for m in state.messages if isinstance(m, UserMessage)] == ["hello", "quick one"]
    assert state.status == "completed" and state.output == "quick answer"
    hello, slow, quick = slow_server.prompts
    assert "slow please" in slow and "slow please" not in quick
    assert quick.startswith(hello)  # the session went on from the first exchange, append-only


# ---------------------------------------------------------------------- in-process: commands, errors


def make_chat(outputs: list[Any], tools: str = "calculator", approve: str = "") -> tuple[Chat, io.StringIO]:
    out = io.StringIO()
    console = Console(file=out, width=200, highlight=False, color_system=None)
    chat = Chat(console, ScriptedModel(outputs), chat_tools(tools, approve), model_spec="scripted")
    return chat, out


def test_bad_input_is_answered_with_a_message_not_a_crash(tmp_path: Path) -> None:
    chat, out = make_chat([scripted_turn("r", "hi")])
    (tmp_path / "junk.json").write_text("{not json")
    for line in (
        "/save",
        "/save x.json",
        "/load",
        f"/load {tmp_path / 'missing.json'}",
        f"/load {tmp_path / 'junk.json'}",
        "/nope",
    ):
        assert chat.handle(line) is True
    text = out.getvalue()
    assert "usage: /save PATH" in text and "nothing to save yet" in text and "usage: /load PATH" in text
    assert "cannot load" in text and "cannot read saved run" in text and "not valid JSON" in text
    assert "unknown command /nope" in text
    assert chat.handle("/quit") is False
    with pytest.raises(ValueError, match="unknown tools: nope"):
        chat_tools("calculator,nope", "")
    with pytest.raises(ValueError, match="not offered: count_words"):
        chat_tools("calculator", "count_words")


def test_cli_set_up_errors_are_one_line_and_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    from agentkit.cli import main

    assert main(["chat", "--tools", "nope"]) == 2
    assert "agentkit: error: unknown tools: nope; known: calculator" in capsys.readouterr().err
    assert main(["chat", "--model", "completions:no-model-name"]) == 2
    assert "cannot load completions:no-model-name" in capsys.readouterr().err
    chat, out = make_chat([])
    chat.handle("/model completions:no-model-name")  # in a chat: said, and the chat goes on
    assert "still on scripted" in out.getvalue() and chat.model_spec == "scripted"


def test_subagent_calls_are_shown_under_their_call(tmp_path: Path) -> None:
    """A sub-agent tool in a chat: its calls and answer appear indented, its approval is asked inline."""
    from agentkit.tools.tool import tool

    from agentkit.agent import Agent

    @tool(requires_approval=True)
    def stamp(text: str) -> str:
        """Stamp a text.

        Args:
            text: what to stamp
        """
        return f"[{text}]"

    child = Agent(
        ScriptedModel(
            [scripted_turn("s", calls=[("stamp", {"text": "memo"})]), scripted_turn("d", "stamped")]
        ),
        [stamp],
    )
    chat, out = make_chat(
        [scripted_turn("p", calls=[("clerk", {"task": "stamp memo"})]), scripted_turn("q", "done: stamped")]
    )
    chat.tools = [child.as_tool("clerk", "Stamps texts.")]
    chat.agent = chat._agent(chat.agent.model, "high")
    answers = iter(["y"])
    chat.console.input = lambda prompt="", **kw: next(answers)  # type: ignore[method-assign]
    chat.handle("stamp the memo")
    text = out.getvalue()
    assert "↳ clerk call stamp" in text and "↳ clerk result [memo]" in text
    assert "↳ clerk ended (completed): stamped" in text and "answer: done: stamped" in text
    assert chat.state is not None and chat.state.status == "completed"
    assert re.search(r"tokens: \d+ prompt", text)


class CtrlCOnce(io.StringIO):
    """Console output that presses Ctrl-C (a real SIGINT to this process) the first time `trigger`
    is written after being armed: a keypress in the middle of a streamed step."""

    def __init__(self, trigger: str) -> None:
        super().__init__()
        self.trigger, self.armed = trigger, False

    def write(self, text: str) -> int:
        n = super().write(text)
        if self.armed and self.trigger in text:
            self.armed = False
            os.kill(os.getpid(), signal.SIGINT)
        return n


def test_ctrl_c_on_the_embedded_backend_keeps_the_kv_state() -> None:
    """After an interrupted message the session continues from the KV state it had before it (the fork
    taken before each message): the next message prefills only its own turn."""
    from agentkit.backends import resolve

    out = CtrlCOnce("thinking:")
    console = Console(file=out, width=200, highlight=False, color_system=None)
    chat = Chat(console, resolve("embedded:tiny"), chat_tools("calculator", ""), model_spec="embedded:tiny")
    chat.handle("Please calculate the sum of 1234 and 4321.")
    assert chat.state is not None and chat.state.output == "The answer is 5555."
    before = RunState.from_json(chat.state.to_json())
    out.armed = True
    chat.handle("Please calculate the sum of 90178 and 39349.")
    assert "interrupted: the step was stopped; the session is as it was before this message" in out.getvalue()
    assert chat.state.to_dict()["messages"] == before.to_dict()["messages"]
    assert chat.state.run_id != before.run_id  # the fork taken before the message
    chat.handle("Please calculate the sum of 7 and 8.")
    first = chat.state.steps[len(before.steps)].model
    assert first is not None
    assert first.cached_tokens == before.usage.context_tokens  # none of the kept context prefilled again
    assert "re-prefilled 0 of" in out.getvalue()


def test_ctrl_c_while_a_tool_runs_says_its_effects_remain() -> None:
    import anyio
    from agentkit.tools.tool import tool

    @tool
    async def slow(x: int) -> int:
        """Takes long (the user presses Ctrl-C while it runs).

        Args:
            x: echoed
        """
        os.kill(os.getpid(), signal.SIGINT)
        await anyio.sleep(10)
        finished.append(x)
        return x

    finished: list[int] = []
    chat, out = make_chat([scripted_turn("r", calls=[("slow", {"x": 1})]), scripted_turn("r", "never")])
    chat.tools = [slow]
    chat.agent = chat._agent(chat.agent.model, "high")
    chat.handle("go")
    assert finished == []  # the tool was cancelled, not waited for
    text = out.getvalue()
    assert "interrupted: the step was stopped" in text
    assert "(1 tool calls had started; their effects remain)" in text
    assert chat.state is None  # the first message: back to no conversation at all


def test_tools_are_named_as_agentkit_run_names_them() -> None:
    tools = chat_tools("calculator,files", "files")
    assert [(t.name, t.requires_approval) for t in tools] == [
        ("calculator", False),
        ("read_file", True),
        ("write_file", True),
        ("edit_file", True),
        ("list_dir", True),
    ]
    from agentkit.tiny.tools import EPISODE_TOOLS

    assert not EPISODE_TOOLS["calculator"].requires_approval  # the shared definition is untouched
    chat, out = make_chat([], tools="calculator,shell", approve="shell")
    chat.handle("/tools")
    assert re.search(r"shell\s+asks", out.getvalue()) and re.search(r"calculator\s+-", out.getvalue())
