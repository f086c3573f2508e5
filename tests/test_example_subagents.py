"""examples/subagents.py end to end: offline with its scripted models, and with `--model` over a real
`/v1/completions` HTTP server whose "model" reads the raw V4 prompts it is sent (the analyst's and each
sub-agent's, several at once), so the delegation, the parallel children, the summed usage and the
approval paused and resumed from JSON all go through the real wire path.

What the tools did is checked apart from the run: the report file holds the density computed from the
almanac's numbers, or does not exist when the write was denied.
"""

from __future__ import annotations

import http.server
import importlib.util
import io
import json
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from rich.console import Console

from agentkit.dsml import ASSISTANT, BOS, USER, render_assistant_turn

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "subagents.py"


def example() -> ModuleType:
    name = "agentkit_example_subagents"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLE)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def run(*argv: str) -> tuple[int, str]:
    console = Console(file=io.StringIO(), width=300, highlight=False)
    rc = example().main(list(argv), console=console)
    return rc, console.file.getvalue()  # type: ignore[attr-defined]


@pytest.mark.parametrize(("town", "density"), [("Lakeview", "400"), ("Brookfield", "270")])
def test_offline_the_analyst_delegates_and_the_report_is_written(
    tmp_path: Path, town: str, density: str
) -> None:
    rc, out = run(f"What is the population density of {town}?", "--out", str(tmp_path))
    assert rc == 0, out
    assert (tmp_path / "report.txt").read_text() == f"{town}: {density} people per km2\n"
    assert "answer: Done. Reporter: saved to report.txt" in out
    assert "approval needed for write_report (call_3_0/call_1_0)" in out
    # 4 analyst turns; two researchers, a calculator and a reporter with 2 turns each
    assert "usage:  12 model calls (4 by the analyst, 8 by its sub-agents), 8 tool calls" in out


def test_offline_a_denied_write_leaves_no_report(tmp_path: Path) -> None:
    rc, out = run("--decide", "no", "--out", str(tmp_path))
    assert rc == 0, out
    assert not (tmp_path / "report.txt").exists()
    assert "was not approved: the user said no" in out


class PromptReadingServer:
    """A real `/v1/completions` SSE server answering each prompt with the example's own policy, applied
    to what the prompt says (system prompt, task, the tool results of the last turn)."""

    def __init__(self) -> None:
        self.prompts: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.prompts.append(body["prompt"])
                text = outer.reply(body["prompt"])
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for i in range(0, len(text), 16):
                    chunk = {"choices": [{"index": 0, "text": text[i : i + 16], "finish_reason": None}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                done = {
                    "choices": [{"index": 0, "text": "", "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": len(body["prompt"]) // 4, "completion_tokens": len(text) // 4},
                }
                self.wfile.write(f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n".encode())

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def reply(prompt: str) -> str:
        system = prompt.removeprefix(BOS).split(USER, 1)[0]
        task = prompt.split(USER, 2)[1].split(ASSISTANT, 1)[0]
        last_user = prompt.rsplit(USER, 1)[1]
        results = re.findall(r"<tool_result>(.*?)</tool_result>", last_user, re.DOTALL)
        answer, calls = example().policy(system, task, results)
        msg: dict[str, Any] = {"role": "assistant", "reasoning_content": "served", "content": answer}
        if calls:
            msg["tool_calls"] = [
                {"type": "function", "function": {"name": n, "arguments": json.dumps(a)}} for n, a in calls
            ]
        return render_assistant_turn(msg, "thinking")


@pytest.fixture
def server() -> Iterator[PromptReadingServer]:
    srv = PromptReadingServer()
    yield srv
    srv.server.shutdown()
    srv.server.server_close()


def test_with_model_over_a_real_completions_server(tmp_path: Path, server: PromptReadingServer) -> None:
    rc, out = run("--model", f"completions:{server.url}#v4", "--out", str(tmp_path))
    assert rc == 0, out
    assert (tmp_path / "report.txt").read_text() == "Lakeview: 400 people per km2\n"
    assert len(server.prompts) == 12  # every agent's every turn went over HTTP
    systems = [p.removeprefix(BOS).split(" ", 3)[:3] for p in server.prompts]
    assert sum(s == ["You", "are", "a"] for s in systems) == 8  # the sub-agents' turns
    assert "usage:  12 model calls (4 by the analyst, 8 by its sub-agents), 8 tool calls" in out
