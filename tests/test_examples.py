"""The examples in examples/ run end to end: real loop, real sandboxes, real Chromium, real HTTP.

Each example's offline model is a policy that decides from the tool results it receives, so these
tests check what the *tools* did, independently of the run: the repository's tests pass in the
sandbox afterwards, the price in the answer is the one the served page held (a random one), a session
saved by one process is resumed by another without redoing work, and the quickstart gives the same
answer through a real `completions:` HTTP backend as through its scripted stand-in.
"""

from __future__ import annotations

import http.server
import io
import json
import math
import random
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _examples import ROOT, load
from agentkit.tools.sandbox import Sandbox, open_sandbox
from rich.console import Console

from agentkit.dsml import TOOL_CALLS_OPEN, USER, render_assistant_turn
from agentkit.messages import AssistantMessage, ToolMessage, UserMessage
from agentkit.session import RunState


def run_example(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200, highlight=False)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # Playwright (browser example) speaks asyncio only


# --------------------------------------------------------------------------------------- quickstart


def expected_price(weight: float, zone: str) -> str:
    base, per_kg = {"domestic": (450, 90), "eu": (900, 150), "world": (1500, 400)}[zone]
    return f"{(base + per_kg * math.ceil(weight)) / 100:.2f} EUR"


@pytest.mark.parametrize("thinking", ["off", "high"])
def test_quickstart_prices_come_from_the_tool(thinking: str) -> None:
    qs = load("quickstart")
    rng = random.Random(7)
    for _ in range(4):
        weight = round(rng.uniform(0.1, 30), 1)
        zone = rng.choice(["domestic", "eu", "world"])
        result = qs.ask(f"What does a {weight} kg parcel to the {zone} zone cost?", thinking=thinking)
        assert result.status == "completed"
        assert result.text == f"Shipping costs {expected_price(weight, zone)}."
        assert (result.usage.requests, result.usage.tool_calls) == (2, 1)


def test_quickstart_tool_validation_reaches_the_answer() -> None:
    result = load("quickstart").ask("Ship 45 kg to the eu zone, please.")
    assert result.status == "completed"
    assert result.text.startswith("I cannot price that")
    assert "less than or equal to 30" in result.text
    tool_msgs = [m for m in result.messages if isinstance(m, ToolMessage)]
    assert len(tool_msgs) == 1 and tool_msgs[0].is_error


class CompletionsServer:
    """A real `/v1/completions` SSE server whose "model" reads the raw DSML prompt it is sent: the
    last user turn holds either the question or the tool result, and it answers in canonical DSML."""

    def __init__(self) -> None:
        self.prompts: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                assert self.path == "/v1/completions", self.path
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                assert body["stream"] is True and body["skip_special_tokens"] is False
                outer.prompts.append(body["prompt"])
                text = outer.reply(body["prompt"])
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for i in range(0, len(text), 5):
                    chunk = {"choices": [{"index": 0, "text": text[i : i + 5], "finish_reason": None}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                done = {
                    "choices": [{"index": 0, "text": "", "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": len(body["prompt"]), "completion_tokens": len(text)},
                }
                self.wfile.write(f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n".encode())

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def reply(prompt: str) -> str:
        last_user = prompt.rsplit(USER, 1)[1]
        result = re.search(r"<tool_result>(.*?)</tool_result>", last_user, re.DOTALL)
        msg: dict[str, Any] = {"role": "assistant", "reasoning_content": "server side", "content": ""}
        if result is not None:
            msg["content"] = f"Shipping costs {result.group(1)}."
        else:
            weight = re.search(r"(\d+(?:\.\d+)?)\s*kg", last_user)
            zone = re.search(r"\b(domestic|eu|world)\b", last_user)
            assert weight is not None and zone is not None, last_user
            args = {"weight_kg": float(weight[1]), "zone": zone[1]}
            msg["tool_calls"] = [
                {"type": "function", "function": {"name": "shipping_cost", "arguments": json.dumps(args)}}
            ]
        return render_assistant_turn(msg, "thinking")


@pytest.fixture
def completions_server() -> Iterator[CompletionsServer]:
    srv = CompletionsServer()
    try:
        yield srv
    finally:
        srv.server.shutdown()
        srv.server.server_close()


def test_quickstart_cli_same_answer_scripted_and_over_http(completions_server: CompletionsServer) -> None:
    question = "How much for 7.2 kg to the world zone?"
    scripted = run_example("examples/quickstart.py", question)
    remote = run_example(
        "examples/quickstart.py", question, "--model", f"completions:{completions_server.url}#v4"
    )
    want = f"answer: Shipping costs {expected_price(7.2, 'world')}."
    for proc in (scripted, remote):
        assert proc.returncode == 0, proc.stderr
        assert want in proc.stdout.splitlines()
    assert "usage:  2 model calls, 1 tool calls" in remote.stdout
    # The server really was the model: two requests, the second one continuing the first verbatim.
    first, second = completions_server.prompts
    assert second.startswith(first) and TOOL_CALLS_OPEN in second[len(first) :]


def test_quickstart_bad_model_spec_and_dead_server_fail_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    qs = load("quickstart")
    with pytest.raises(SystemExit) as exc:
        qs.main(["--model", "completions:no-model-name"])
    assert exc.value.code == 2
    assert "completions:<base_url>#<model>" in capsys.readouterr().err
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert qs.main(["--model", f"completions:http://127.0.0.1:{port}#v4"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("model error:") and f"127.0.0.1:{port}" in err


# ------------------------------------------------------------------------------------- coding agent


async def fresh_repo(backend: str, tmp_path: Path) -> Sandbox:
    ca = load("coding_agent")
    sandbox = await open_sandbox(backend)
    await sandbox.upload(ca.write_demo_repo(tmp_path / "repo"), ".")
    return sandbox


def tool_names(messages: list[Any]) -> list[str]:
    return [c.name for m in messages if isinstance(m, AssistantMessage) for c in m.tool_calls]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "backend",
    [pytest.param("docker", marks=pytest.mark.docker), pytest.param("bwrap", marks=pytest.mark.bwrap)],
)
async def test_coding_agent_fixes_the_repo_in_the_sandbox(backend: str, tmp_path: Path) -> None:
    ca = load("coding_agent")
    async with await fresh_repo(backend, tmp_path) as sandbox:
        before = await sandbox.exec(ca.TEST_COMMAND)
        assert before.exit_code != 0 and "FAILED (failures=2)" in before.stderr
        outcome = await ca.run_coding_agent(sandbox, console=quiet())
        assert outcome.result.status == "completed"
        assert tool_names(outcome.result.messages) == ["list_dir", "shell", "read_file", "edit_file", "shell"]
        assert outcome.result.text.startswith("Edited wordcount.py; the tests now pass")
        # Checked here, not through the example: the suite passes and only the code changed.
        after = await sandbox.exec(ca.TEST_COMMAND)
        assert after.exit_code == 0 and "Ran 3 tests" in after.stderr
        assert (await sandbox.read_file("test_wordcount.py")).decode() == ca.DEMO_REPO["test_wordcount.py"]
        fixed = (await sandbox.read_file("wordcount.py")).decode()
        assert fixed == ca.DEMO_REPO["wordcount.py"].replace(
            "raw.strip(PUNCTUATION)", "raw.strip(PUNCTUATION).lower()"
        )


@pytest.mark.anyio
@pytest.mark.bwrap
async def test_coding_agent_denied_write_changes_nothing(tmp_path: Path) -> None:
    ca = load("coding_agent")
    async with await fresh_repo("bwrap", tmp_path) as sandbox:
        outcome = await ca.run_coding_agent(sandbox, approve_writes=True, decide_mode="no", console=quiet())
        assert outcome.result.status == "completed"
        assert "not approved: the user said no" in outcome.result.text
        assert outcome.check is not None and outcome.check.exit_code != 0
        assert (await sandbox.read_file("wordcount.py")).decode() == ca.DEMO_REPO["wordcount.py"]
        denied = [m for m in outcome.result.messages if isinstance(m, ToolMessage) and m.name == "edit_file"]
        assert len(denied) == 1 and denied[0].is_error


@pytest.mark.bwrap
def test_coding_agent_session_paused_in_one_process_resumes_in_another(tmp_path: Path) -> None:
    ca = load("coding_agent")
    first, second, third = tmp_path / "run.json", tmp_path / "run2.json", tmp_path / "run3.json"
    common = ["--sandbox", "bwrap", "--model", "scripted"]
    p1 = run_example("examples/coding_agent.py", *common, "--approve-writes", "--save-session", str(first))
    assert p1.returncode == 0, p1.stdout + p1.stderr
    paused = RunState.from_json(first.read_text())
    assert paused.status == "paused" and [c.name for c in paused.pending_calls] == ["edit_file"]
    ws1 = ca.workspace_copy(first)
    assert (ws1 / "wordcount.py").read_text() == ca.DEMO_REPO["wordcount.py"]  # nothing written before the OK

    resume = ["--resume", str(first), "--decide", "yes", "--save-session", str(second)]
    p2 = run_example("examples/coding_agent.py", *common, *resume)
    assert p2.returncode == 0, p2.stdout + p2.stderr
    done = RunState.from_json(second.read_text())
    assert done.status == "completed" and done.run_id == paused.run_id
    # Every call happened exactly once across the two processes: the resume redid nothing.
    assert tool_names(done.messages) == ["list_dir", "shell", "read_file", "edit_file", "shell"]
    assert done.usage.requests == paused.usage.requests + 2
    assert done.output is not None and done.output.startswith("Edited wordcount.py; the tests now pass")
    check = subprocess.run(
        [sys.executable, "-m", "unittest", "-q"],
        cwd=ca.workspace_copy(second),
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr

    # A finished run continues with a follow-up task; without one it is refused (exit code 2).
    follow_up = ["--resume", str(second), "--task", "Check the tests again.", "--save-session", str(third)]
    assert ca.main([*common, *follow_up], console=quiet()) == 0
    later = RunState.from_json(third.read_text())
    assert later.status == "completed" and later.output is not None
    assert later.output.startswith("The tests already pass")
    users = [m.content for m in later.messages if isinstance(m, UserMessage)]
    assert len(users) == 2 and users[-1] == "Check the tests again."
    console = quiet()
    assert ca.main([*common, "--resume", str(second)], console=console) == 2
    assert "give a follow-up task" in console.file.getvalue()  # type: ignore[attr-defined]


@pytest.mark.bwrap
def test_coding_agent_exit_code_is_the_independent_test_verdict(tmp_path: Path) -> None:
    """On a repo whose bug the scripted model does not know, the run completes but the program fails."""
    ca = load("coding_agent")
    repo = tmp_path / "other"
    repo.mkdir()
    (repo / "calc.py").write_text("def double(x):\n    return x + 2\n")
    (repo / "test_calc.py").write_text(
        "import unittest\nfrom calc import double\n\n"
        "class T(unittest.TestCase):\n    def test_double(self):\n        self.assertEqual(double(5), 10)\n"
    )
    console = quiet()
    assert ca.main(["--sandbox", "bwrap", "--repo", str(repo)], console=console) == 1
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert 'call read_file(path="calc.py")' in out
    assert "answer: The scripted model only knows the demo repo's bug" in out
    assert "status: completed" in out and "fail (exit code 1)" in out


# ----------------------------------------------------------------------------------- browsing agent


@pytest.mark.anyio
@pytest.mark.browser
async def test_browsing_agent_answers_from_the_served_page() -> None:
    ba = load("browsing_agent")
    rng = random.Random()
    price = f"{rng.randint(10, 999)}.{rng.randint(10, 99)}"
    with ba.serve_demo_site(team_price=price) as site:
        question = f"According to {site}/, how much does the Team plan cost per month?"
        outcome = await ba.browse(question, [site], console=quiet())
    assert outcome.stats.status == "completed"
    assert (
        outcome.stats.answer == f"The Team plan costs ${price} per month (according to {site}/pricing.html)."
    )
    assert ba.TRACKER in outcome.blocked  # the outside image on the home page never loaded


@pytest.mark.browser
def test_browsing_agent_cli_serves_the_demo_site() -> None:
    console = Console(file=io.StringIO(), width=300, highlight=False)
    rc = load("browsing_agent").main(["--serve-demo-site", "--team-price", "31"], console=console)
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert rc == 0, out
    assert "answer: The Team plan costs $31 per month" in out


def test_browsing_agent_cli_needs_exactly_one_start() -> None:
    ba = load("browsing_agent")
    for argv in ([], ["--serve-demo-site", "--url", "http://127.0.0.1:1/"]):
        with pytest.raises(SystemExit) as exc:
            ba.main(argv, console=quiet())
        assert exc.value.code == 2
