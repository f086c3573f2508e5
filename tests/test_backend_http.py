"""Remote backends against a real HTTP server on 127.0.0.1 (stdlib, in a thread), never a patched client."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from agentkit.tools.tool import tool

from agentkit.agent import Agent
from agentkit.backends import ModelAuthError, ModelError, ModelHTTPError, ModelResponseError, resolve
from agentkit.dsml import EOS, encode_messages, render_assistant_turn
from agentkit.limits import Pricing
from agentkit.messages import message_to_dict


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@dataclass
class Reply:
    status: int = 200
    events: list[Any] = field(default_factory=list)  # dicts (JSON) or raw strings
    done: bool = True
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None  # a non-SSE body
    delay: float = 0.0  # seconds to stall before answering (to trip the client's read timeout)


@dataclass
class Server:
    url: str
    replies: list[Reply | Callable[[dict[str, Any]], Reply]]
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server("", [])

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            return

        def do_POST(self) -> None:
            # the client may give up first (a timeout test): nothing left to answer then
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self._answer()

        def _answer(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            srv.requests.append(body)
            srv.headers.append(dict(self.headers))
            srv.paths.append(self.path)
            item = srv.replies.pop(0) if srv.replies else Reply(500, body="no reply scripted")
            reply = item(body) if callable(item) else item
            if reply.delay:
                time.sleep(reply.delay)
            if reply.body is not None or reply.status != 200:
                data = (reply.body or "").encode()
                self.send_response(reply.status)
                for k, v in {"Content-Type": "application/json", **reply.headers}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            for e in reply.events:
                line = e if isinstance(e, str) else json.dumps(e, ensure_ascii=False)
                self.wfile.write(f"data: {line}\n\n".encode())
                self.wfile.flush()
            if reply.done:
                self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
            self.close_connection = True

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield srv
    finally:
        httpd.shutdown()
        httpd.server_close()


@tool
def add(a: int, b: int) -> int:
    """Add."""
    return a + b


def canonical(reasoning: str, content: str, calls: list[tuple[str, dict[str, Any]]] = ()) -> str:  # type: ignore[assignment]
    msg = {
        "reasoning_content": reasoning,
        "content": content,
        "tool_calls": [
            {"type": "function", "function": {"name": n, "arguments": json.dumps(a)}} for n, a in calls
        ],
    }
    return render_assistant_turn(msg, "thinking", eos=False)


def completion_reply(text: str, prompt_tokens: int, cached: int, piece: int = 5) -> Reply:
    events: list[Any] = [
        {"choices": [{"index": 0, "text": text[i : i + piece], "finish_reason": None}]}
        for i in range(0, len(text), piece)
    ]
    events.append({"choices": [{"index": 0, "text": "", "finish_reason": "stop"}]})
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 9,
        "prompt_tokens_details": {"cached_tokens": cached},
    }
    events.append({"choices": [], "usage": usage})
    return Reply(events=events)


# ------------------------------------------------------------------------------------- completions


@pytest.mark.anyio
async def test_completions_backend_owns_the_prompt(server: Server) -> None:
    server.replies = [
        completion_reply(canonical("sum it", "", [("add", {"a": 2, "b": 3})]), 100, 0),
        completion_reply(canonical("easy", "5"), 140, 100),
    ]
    model = resolve(f"completions:{server.url}#dsv4", pricing=Pricing(1.0, 0.1, 2.0), backoff_s=0.01)
    result = await Agent(model, [add]).run("2+3?")
    assert result.ok and result.output == "5"
    first, second = server.requests
    assert server.paths == ["/v1/completions"] * 2
    assert first["skip_special_tokens"] is False and first["stream"] is True and first["model"] == "dsv4"
    # the server stripped EOS; the transcript still closes the turn canonically, and the second prompt
    # is the first plus exactly what was generated plus the results turn (a 100% prefix-cache hit)
    assert second["prompt"].startswith(
        first["prompt"] + canonical("sum it", "", [("add", {"a": 2, "b": 3})]) + EOS
    )
    assert result.transcript.text == encode_messages(
        [message_to_dict(m) for m in result.messages], "thinking", drop_thinking=False
    )
    assert (result.usage.prompt_tokens, result.usage.cached_prompt_tokens) == (240, 100)
    assert result.usage.cost_usd == pytest.approx((240 - 100) * 1e-6 + 100 * 0.1e-6 + 18 * 2e-6)


@pytest.mark.anyio
async def test_retries_on_429_and_5xx_then_succeeds(server: Server) -> None:
    server.replies = [
        Reply(503, body='{"error": "overloaded"}'),
        Reply(429, body='{"error": "slow down"}', headers={"Retry-After": "0"}),
        completion_reply(canonical("", "hi"), 10, 0),
    ]
    model = resolve(f"completions:{server.url}/v1#m", backoff_s=0.01)
    result = await Agent(model, []).run("x")
    assert result.output == "hi" and len(server.requests) == 3


@pytest.mark.anyio
async def test_gives_up_after_retry_budget(server: Server) -> None:
    server.replies = [Reply(502, body="bad gateway")] * 3
    model = resolve(f"completions:{server.url}#m", backoff_s=0.01, max_retries=2)
    with pytest.raises(ModelHTTPError, match="HTTP 502"):
        await Agent(model, []).run("x")
    assert len(server.requests) == 3


@pytest.mark.anyio
async def test_auth_error_is_clear_and_not_retried(server: Server) -> None:
    server.replies = [Reply(401, body='{"error": "invalid api key"}')]
    model = resolve("deepseek:deepseek-v4-flash", base_url=server.url, api_key="sk-wrong", backoff_s=0.01)
    with pytest.raises(ModelAuthError, match=r"authentication failed.*invalid api key"):
        await Agent(model, []).run("x")
    assert len(server.requests) == 1
    assert server.headers[0]["Authorization"] == "Bearer sk-wrong"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("reply", "match"),
    [
        (Reply(events=["{not json"]), "malformed JSON"),
        (
            Reply(events=[{"choices": [{"text": "hi", "finish_reason": None}]}], done=False),
            "without \\[DONE\\]",
        ),
        (Reply(events=[{"choices": [{"text": 5, "finish_reason": "stop"}]}]), "not a string"),
        (Reply(events=[{"choices": [{"text": "hi", "finish_reason": None}]}]), "without a finish_reason"),
        (Reply(events=[{"nothing": 1}]), "without 'choices'"),
        (Reply(200, body='{"choices": []}'), "expected an event stream"),
    ],
)
async def test_malformed_responses_raise_typed_errors(server: Server, reply: Reply, match: str) -> None:
    server.replies = [reply]
    model = resolve(f"completions:{server.url}#m", backoff_s=0.01)
    with pytest.raises(ModelResponseError, match=match):
        await Agent(model, []).run("x")


def test_bad_specs() -> None:
    with pytest.raises(ValueError, match="base_url"):
        resolve("completions:http://x")
    with pytest.raises(ValueError, match="http"):
        resolve("chat:ftp://x#m")
    with pytest.raises(ValueError, match="unknown model kind"):
        resolve("gpt:foo")


# --------------------------------------------------------------------------------------------- chat


def chat_events(reasoning: str, content: str, calls: list[tuple[str, str]], cached: int = 0) -> Reply:
    ev: list[Any] = []
    for i in range(0, len(reasoning), 4):
        ev.append({"choices": [{"index": 0, "delta": {"reasoning_content": reasoning[i : i + 4]}}]})
    for i in range(0, len(content), 4):
        ev.append({"choices": [{"index": 0, "delta": {"content": content[i : i + 4]}}]})
    for idx, (name, args) in enumerate(calls):
        head = {
            "index": idx,
            "id": f"srv_{idx}",
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        ev.append({"choices": [{"index": 0, "delta": {"tool_calls": [head]}}]})
        for j in range(0, len(args), 3):
            piece = {"index": idx, "function": {"arguments": args[j : j + 3]}}
            ev.append({"choices": [{"index": 0, "delta": {"tool_calls": [piece]}}]})
    ev.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls" if calls else "stop"}]})
    ev.append(
        {
            "choices": [],
            "usage": {"prompt_tokens": 50, "completion_tokens": 7, "prompt_cache_hit_tokens": cached},
        }
    )
    return Reply(events=ev)


@pytest.mark.anyio
async def test_deepseek_chat_round_trips_reasoning_content(server: Server) -> None:
    server.replies = [
        chat_events("let me add", "", [("add", '{"a": 1, "b": 2}'), ("add", '{"a": 3, "b": 4}')]),
        chat_events("", "", [("add", '{"a": 0, "b": 0}')]),  # a tool turn with no reasoning at all
        chat_events("done", "3 and 7", [], cached=40),
    ]
    model = resolve("deepseek:deepseek-v4-pro", base_url=server.url, api_key="sk-test", backoff_s=0.01)
    result = await Agent(model, [add], instructions="sys", thinking="max").run("add")
    assert result.ok and result.output == "3 and 7"
    req = server.requests[2]
    assert req["thinking"] == {"type": "enabled"} and req["reasoning_effort"] == "max"
    assert req["tools"][0]["function"]["name"] == "add"
    roles = [m["role"] for m in req["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "tool", "assistant", "tool"]
    a1, a2 = req["messages"][2], req["messages"][5]
    assert a1["reasoning_content"] == "let me add" and a2["reasoning_content"] == ""
    assert [c["id"] for c in a1["tool_calls"]] == ["srv_0", "srv_1"]
    assert json.loads(a1["tool_calls"][1]["function"]["arguments"]) == {"a": 3, "b": 4}
    assert [m.get("tool_call_id") for m in req["messages"] if m["role"] == "tool"] == [
        "srv_0",
        "srv_1",
        "srv_0",
    ]
    assert [m["content"] for m in req["messages"] if m["role"] == "tool"] == ["3", "7", "0"]
    assert result.usage.cached_prompt_tokens == 40
    # the text view of a chat run is still the encoder's rendering of its messages
    assert result.transcript.text == encode_messages(
        [message_to_dict(m) for m in result.messages], "thinking", drop_thinking=False, reasoning_effort="max"
    )


@pytest.mark.anyio
async def test_chat_heals_dsml_found_in_content(server: Server) -> None:
    leaked = canonical("", "Let me check.", [("add", {"a": 20, "b": 22})])
    leaked = leaked.split("</think>", 1)[1]
    server.replies = [chat_events("thinking", leaked, []), chat_events("", "42", [])]
    model = resolve(f"chat:{server.url}#dsv4", backoff_s=0.01)
    result = await Agent(model, [add]).run("x")
    assert result.output == "42"
    second = server.requests[1]
    assert second["chat_template_kwargs"] == {"thinking": True}
    assistant = second["messages"][2]
    assert assistant["content"] == "Let me check." and assistant["tool_calls"][0]["function"]["name"] == "add"
    assert second["messages"][3]["content"] == "42"


@pytest.mark.anyio
async def test_chat_thinking_off_sends_no_reasoning(server: Server) -> None:
    server.replies = [chat_events("", "", [("add", '{"a": 1, "b": 1}')]), chat_events("", "2", [])]
    model = resolve("deepseek:deepseek-v4-flash", base_url=server.url, api_key="k", backoff_s=0.01)
    result = await Agent(model, [add], thinking="off").run("x")
    assert result.output == "2"
    req = server.requests[1]
    assert req["thinking"] == {"type": "disabled"} and "reasoning_effort" not in req
    assert all("reasoning_content" not in m for m in req["messages"])


@pytest.mark.anyio
async def test_chat_heals_dsml_written_inside_reasoning(server: Server) -> None:
    block = canonical("", "", [("add", {"a": 1, "b": 2})]).split("</think>", 1)[1].strip()
    server.replies = [chat_events("I will call it. " + block, "", []), chat_events("", "3", [])]
    model = resolve(f"chat:{server.url}#dsv4", backoff_s=0.01)
    result = await Agent(model, [add]).run("x")
    assert result.output == "3"
    assistant = server.requests[1]["messages"][2]
    assert assistant["reasoning_content"] == "I will call it."
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"a": 1, "b": 2}


@pytest.mark.anyio
async def test_read_timeout_is_retried_then_reported(server: Server) -> None:
    server.replies = [Reply(events=[], delay=1.0), completion_reply(canonical("", "late but ok"), 5, 0)]
    model = resolve(f"completions:{server.url}#m", timeout=0.2, backoff_s=0.01, max_retries=1)
    assert (await Agent(model, []).run("x")).output == "late but ok"
    server.replies = [Reply(events=[], delay=1.0), Reply(events=[], delay=1.0)]
    with pytest.raises(ModelError, match="ReadTimeout"):
        await Agent(model, []).run("x")


def test_scripted_spec_and_run_sync_on_trio(tmp_path: Any) -> None:
    path = tmp_path / "outs.json"
    path.write_text(json.dumps([canonical("", "from a file") + EOS]))
    agent = Agent(resolve(f"scripted:{path}"), [])
    assert agent.run_sync("x", backend="trio").output == "from a file"
    path.write_text(json.dumps({"not": "a list"}))
    with pytest.raises(ValueError, match="JSON list"):
        resolve(f"scripted:{path}")


@pytest.mark.anyio
async def test_chat_structured_output_schema_in_system_text(server: Server) -> None:
    from pydantic import BaseModel

    class Point(BaseModel):
        x: int
        y: int

    server.replies = [chat_events("", '{"x": 1}', []), chat_events("", '{"x": 1, "y": 2}', [])]
    model = resolve(f"chat:{server.url}#dsv4", backoff_s=0.01)
    result = await Agent(model, [], instructions="Answer in JSON.", output_type=Point).run("where?")
    assert result.output == Point(x=1, y=2)
    system = server.requests[0]["messages"][0]
    assert system["content"].startswith("Answer in JSON.\n\n## Response Format:")
    assert '"required": ["x", "y"]' in system["content"] and "response_format" not in system
    assert "did not match the required output schema" in server.requests[1]["messages"][-1]["content"]


def test_deepseek_without_a_key_fails_before_any_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """The DeepSeek API always needs a key: say so at once instead of a network or 401 error later."""
    monkeypatch.delenv("DEEPSEEK_API_KEY", raising=False)
    hits: list[str] = []

    class Count(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            hits.append(self.path)
            self.send_response(500)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Count)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        model = resolve("deepseek:deepseek-v4-flash", base_url=f"http://127.0.0.1:{server.server_port}")
        agent = Agent(model)
        with pytest.raises(ModelAuthError, match=r"DEEPSEEK_API_KEY"):
            agent.run_sync("hi")
    finally:
        server.shutdown()
    assert hits == []
