"""`agentkit serve` (agentkit/serve/): the real server on 127.0.0.1, driven by real clients.

The server is uvicorn on a random port over an engine with the shipped agentkit-tiny model (CPU); clients
are the official `openai` client (sync and async, streamed and not), agentkit's own `chat:` and
`completions:` backends, the OpenAI Agents SDK, raw httpx for malformed requests, and a client process
killed mid-stream. Nothing of the model or the protocol is faked; one test forces the model's tokens (a
logits processor on the real engine) to get a parallel tool call agentkit-tiny would not write by itself.

What must hold: tool calls, reasoning and cached tokens come back as the OpenAI API shapes them; an agent
run through the server equals the same run embedded; bad requests get typed 4xx errors; a killed client
leaves no running sequence; 32 concurrent streams each get their own right answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import openai
import pytest
import torch
import uvicorn
from agentkit.runtime.engine import Engine
from agentkit.runtime.generate import SamplingParams

from agentkit import dsml
from agentkit.agent import Agent
from agentkit.backends import resolve
from agentkit.backends.completions import CompletionsModel
from agentkit.backends.embedded import EmbeddedModel
from agentkit.limits import Limits
from agentkit.serve import Defaults, app
from agentkit.tiny import calc
from agentkit.tiny.tasks import extract_answer
from agentkit.tiny.tools import all_tools

INSTRUCTIONS = "You are a helpful assistant that solves tasks with tools. Answer with the final result."
TOOLS = ("count_words", "convert_units", "calculator", "days_between")
MODEL = "agentkit-tiny"
KEY = "sk-test-serve"


@contextlib.contextmanager
def running(asgi: Any) -> Iterator[str]:
    """A real uvicorn server on 127.0.0.1 (a random free port, bound before it starts); its /v1 URL."""
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on such sockets; without it every keep-alive
    # request waits ~40 ms for a delayed ACK (uvicorn's own host/port sockets have it)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(asgi, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    before = torch.get_num_threads()
    torch.set_num_threads(min(2, os.cpu_count() or 1))  # the scheduler thread keeps its creator's count
    eng = Engine.load("tiny")
    torch.set_num_threads(before)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def base_url(engine: Engine) -> Iterator[str]:
    with running(app(engine, model=MODEL, api_key=KEY, defaults=Defaults(max_tokens=400))) as url:
        yield url


@pytest.fixture(scope="module")
def tool_schemas() -> list[dict[str, Any]]:
    tools = all_tools()
    return Agent("scripted:", [tools[n] for n in TOOLS], instructions=INSTRUCTIONS).tool_schemas


def _question(meters: int) -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": INSTRUCTIONS},
        {"role": "user", "content": f"How many cm is {meters} m?"},
    ]


def _assistant(message: Any) -> dict[str, Any]:
    """An assistant message as a client sends it back: content, reasoning and calls as received."""
    out: dict[str, Any] = {"role": "assistant", "content": message.content}
    out["reasoning_content"] = message.reasoning_content
    if message.tool_calls:
        out["tool_calls"] = [c.model_dump(include={"id", "type", "function"}) for c in message.tool_calls]
    return out


# ------------------------------------------------------------------------------------ openai client


def test_openai_sync_client_tool_call_then_answer_with_reasoning_round_trip(
    base_url: str, tool_schemas: list[dict[str, Any]]
) -> None:
    client = openai.OpenAI(base_url=base_url, api_key=KEY)
    assert [m.id for m in client.models.list()] == [MODEL]
    messages = _question(150)
    first = client.chat.completions.create(model=MODEL, messages=messages, tools=tool_schemas)  # type: ignore[arg-type]
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    msg = choice.message
    assert msg.reasoning_content  # thinking is the default mode; it comes back as reasoning_content
    (call,) = msg.tool_calls or []
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "convert_units"
    assert json.loads(call.function.arguments) == {"value": 150, "from_unit": "m", "to_unit": "cm"}
    assert first.usage is not None and first.usage.prompt_tokens > 128

    # the client sends the turn back with its reasoning and the tool's result
    content = calc.convert(150, "m", "cm")  # what the tool returns
    messages += [_assistant(msg), {"role": "tool", "tool_call_id": call.id, "content": content}]
    second = client.chat.completions.create(model=MODEL, messages=messages, tools=tool_schemas)  # type: ignore[arg-type]
    assert second.choices[0].finish_reason == "stop"
    assert not second.choices[0].message.tool_calls
    assert extract_answer(second.choices[0].message.content or "") == "15000 cm"
    # the whole history (the last prompt and everything generated) was served from the kept state
    history = first.usage.prompt_tokens + first.usage.completion_tokens
    details = second.usage.prompt_tokens_details if second.usage else None
    assert details is not None and details.cached_tokens == history


def test_openai_async_client_stream_equals_the_non_streamed_answer(
    base_url: str, tool_schemas: list[dict[str, Any]]
) -> None:
    async def go() -> tuple[Any, dict[str, Any], list[Any]]:
        client = openai.AsyncOpenAI(base_url=base_url, api_key=KEY)
        messages = _question(275)
        whole = await client.chat.completions.create(model=MODEL, messages=messages, tools=tool_schemas)  # type: ignore[arg-type]
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=messages,  # type: ignore[arg-type]
            tools=tool_schemas,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
        got: dict[str, Any] = {"reasoning": "", "content": "", "calls": {}, "finish": None, "usage": None}
        chunks = []
        async for chunk in stream:
            chunks.append(chunk)
            if chunk.usage is not None:
                got["usage"] = chunk.usage
            for c in chunk.choices:
                d = c.delta
                got["reasoning"] += getattr(d, "reasoning_content", None) or ""
                got["content"] += d.content or ""
                for tc in d.tool_calls or []:
                    slot = got["calls"].setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                    slot["id"] = slot["id"] or tc.id
                    slot["name"] += (tc.function.name if tc.function else None) or ""
                    slot["arguments"] += (tc.function.arguments if tc.function else None) or ""
                got["finish"] = c.finish_reason or got["finish"]
        await client.close()  # here: a client left to the garbage collector closes in a later test's loop
        return whole, got, chunks

    whole, got, chunks = anyio.run(go)
    msg = whole.choices[0].message
    assert got["reasoning"] == msg.reasoning_content and got["content"] == (msg.content or "")
    assert [(c["name"], c["arguments"]) for c in got["calls"].values()] == [
        (c.function.name, c.function.arguments) for c in msg.tool_calls or []
    ]
    assert json.loads(got["calls"][0]["arguments"]) == {"value": 275, "from_unit": "m", "to_unit": "cm"}
    assert got["finish"] == "tool_calls" == whole.choices[0].finish_reason
    # reasoning streamed token by token, before the call; usage came last, with the shared prefix cached
    assert sum(1 for c in chunks if c.choices and getattr(c.choices[0].delta, "reasoning_content", None)) > 3
    assert chunks[-1].usage is not None and not chunks[-1].choices
    assert got["usage"].completion_tokens == whole.usage.completion_tokens
    assert got["usage"].prompt_tokens_details.cached_tokens > 0


class _Forced:
    """The real engine, but every request writes `text` (a logits processor forcing its tokens)."""

    def __init__(self, engine: Engine, text: str) -> None:
        self._engine = engine
        self._ids = engine.tokenizer.encode(text, allow_special=True)  # type: ignore[union-attr]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def submit(self, prompt: Any, params: SamplingParams, **kw: Any) -> Any:
        ids = self._ids

        def force(generated: list[int], logits: torch.Tensor) -> torch.Tensor:
            out = torch.full_like(logits, float("-inf"))
            out[ids[min(len(generated), len(ids) - 1)]] = 0.0
            return out

        kw["logits_processor"] = force
        return self._engine.submit(prompt, params, **kw)


def test_parallel_tool_calls_stream_each_invoke_as_its_arguments_arrive(
    engine: Engine, tool_schemas: list[dict[str, Any]]
) -> None:
    calls = [
        {
            "id": "a",
            "type": "function",
            "function": {"name": "calculator", "arguments": '{"expression": "12 * (3 + 4)"}'},
        },
        {
            "id": "b",
            "type": "function",
            "function": {
                "name": "convert_units",
                "arguments": '{"from_unit": "km", "to_unit": "m", "value": 2}',
            },
        },
    ]
    turn = {
        "role": "assistant",
        "reasoning_content": "Two tools at once.",
        "content": "",
        "tool_calls": calls,
    }
    text = dsml.render_assistant_turn(turn, "thinking")  # exactly what a model writes for this turn
    with running(app(_Forced(engine, text), model=MODEL)) as url:  # type: ignore[arg-type]
        client = openai.OpenAI(base_url=url, api_key="unused")
        events: list[tuple[int, str, str]] = []  # (call index, "start" | "args", piece)
        finish = None
        for chunk in client.chat.completions.create(
            model=MODEL,
            messages=_question(1),
            tools=tool_schemas,
            stream=True,  # type: ignore[arg-type]
        ):
            for c in chunk.choices:
                for tc in c.delta.tool_calls or []:
                    if tc.id:
                        events.append((tc.index, "start", tc.function.name or ""))  # type: ignore[union-attr]
                    if tc.function and tc.function.arguments:
                        events.append((tc.index, "args", tc.function.arguments))
                finish = c.finish_reason or finish
        whole = client.chat.completions.create(model=MODEL, messages=_question(1), tools=tool_schemas)  # type: ignore[arg-type]
    assert finish == "tool_calls"
    starts = [e for e in events if e[1] == "start"]
    assert starts == [(0, "start", "calculator"), (1, "start", "convert_units")]
    args = {i: "".join(p for j, k, p in events if j == i and k == "args") for i in (0, 1)}
    assert [json.loads(args[0]), json.loads(args[1])] == [
        json.loads(c["function"]["arguments"]) for c in calls
    ]
    # the first call's arguments were complete before the second call started, and its string value
    # arrived in pieces (streamed as generated, not after the turn)
    first_start_of_1 = events.index(starts[1])
    assert "".join(p for j, k, p in events[:first_start_of_1] if j == 0 and k == "args") == args[0]
    assert sum(1 for j, k, _ in events if j == 0 and k == "args") > 2
    msg = whole.choices[0].message
    assert [(c.function.name, c.function.arguments) for c in msg.tool_calls or []] == [
        (c["function"]["name"], args[i]) for i, c in enumerate(calls)
    ]
    assert msg.reasoning_content == "Two tools at once."


def test_tool_choice_none_required_and_named(base_url: str, tool_schemas: list[dict[str, Any]]) -> None:
    client = openai.OpenAI(base_url=base_url, api_key=KEY)
    ask = {"model": MODEL, "messages": _question(42), "tools": tool_schemas}
    none = client.chat.completions.create(**ask, tool_choice="none", max_tokens=60)  # type: ignore[call-overload]
    assert not none.choices[0].message.tool_calls and none.choices[0].finish_reason in ("stop", "length")
    required = client.chat.completions.create(**ask, tool_choice="required")  # type: ignore[call-overload]
    assert required.choices[0].finish_reason == "tool_calls" and required.choices[0].message.tool_calls
    named = client.chat.completions.create(  # type: ignore[call-overload]
        **ask, tool_choice={"type": "function", "function": {"name": "calculator"}}
    )
    calls = named.choices[0].message.tool_calls or []
    assert calls and calls[0].function.name == "calculator"


def test_completions_are_token_exact_for_ids_and_text(base_url: str, engine: Engine) -> None:
    tok = engine.tokenizer
    assert tok is not None
    prompt = dsml.encode_messages(_question(9), "thinking")
    ids = tok.encode(prompt, allow_special=True)
    reference = Engine(engine.model, max_seqs=1, cache_bytes=0)  # the same request on its own, no server
    want = reference.generate(ids, SamplingParams(temperature=0.0, max_tokens=40, stop_strings=()))
    reference.close()
    client = openai.OpenAI(base_url=base_url, api_key=KEY)
    extra = {"return_token_ids": True, "skip_special_tokens": False}
    by_ids = client.completions.create(
        model=MODEL, prompt=ids, max_tokens=40, temperature=0, extra_body=extra
    )
    by_text = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=40, temperature=0, extra_body=extra
    )
    for got in (by_ids, by_text):
        d = got.model_dump()
        assert d["prompt_token_ids"] == ids
        gen = d["choices"][0]["token_ids"]
        assert gen == [t for t in want.token_ids if t != tok.eos_id]
        assert d["choices"][0]["text"] == tok.decode(gen)
    # streamed, the pieces add up to the same text and ids
    pieces, piece_ids = [], []
    for chunk in client.completions.create(
        model=MODEL, prompt=ids, max_tokens=40, temperature=0, stream=True, extra_body=extra
    ):
        pieces.append(chunk.choices[0].text)
        piece_ids += chunk.model_dump()["choices"][0].get("token_ids") or []
    assert (
        "".join(pieces) == by_ids.choices[0].text
        and piece_ids == by_ids.model_dump()["choices"][0]["token_ids"]
    )


# ------------------------------------------------------------------------- agents through the server


def _agent(model: Any) -> Agent[None, str]:
    tools = all_tools()
    return Agent(model, [tools[n] for n in TOOLS], instructions=INSTRUCTIONS, limits=Limits(max_steps=4))


@pytest.mark.parametrize("backend", ["chat", "completions"])
def test_agent_through_the_server_gives_the_embedded_runs_transcript(base_url: str, backend: str) -> None:
    """The same agent, same task: embedded (its own engine) vs through the server, turn by turn."""
    root = base_url.removesuffix("/v1")
    prompts = {"How many cm is 150 m?": "15000 cm", "How many g is 3 kg?": "3000 g"}
    embedded = EmbeddedModel("tiny", max_tokens=400)
    for prompt, answer in prompts.items():
        want = _agent(embedded).run_sync(prompt)
        if backend == "chat":
            remote: Any = resolve(f"chat:{root}#{MODEL}", api_key=KEY, max_tokens=400)
        else:
            remote = CompletionsModel(root, MODEL, api_key=KEY, max_tokens=400, temperature=0.0)
        got = _agent(remote).run_sync(prompt)
        assert got.status == want.status == "completed"
        assert got.transcript.text == want.transcript.text
        assert got.text == want.text
        assert len(got.state.steps) == len(want.state.steps) >= 2
        # every turn after the first reused the server's state for the whole history
        assert got.usage.cached_prompt_tokens > 0
        assert extract_answer(got.text or "") == answer  # the model is doing the task


def test_openai_agents_sdk_runs_a_tool_calling_agent_against_the_server(
    base_url: str, tool_schemas: list[dict[str, Any]]
) -> None:
    """The OpenAI Agents SDK's own agent loop (its chat-completions model, its tool dispatch) end to end
    against the server. The tools are the SDK's `FunctionTool`s declared with the JSON schemas agentkit-tiny
    was trained on (the SDK's generated strict schemas read differently, and a 12M-parameter model only
    knows its training format: given them it picks the wrong tool)."""
    import agents  # the dev extra installs openai-agents

    agents.set_tracing_disabled(True)
    impl = {
        "count_words": lambda a: calc.count_words(a["text"]),
        "convert_units": lambda a: calc.convert(a["value"], a["from_unit"], a["to_unit"]),
        "calculator": lambda a: calc.calculate(a["expression"]),
        "days_between": lambda a: calc.days_between(a["start"], a["end"]),
    }
    calls: list[tuple[str, dict[str, Any]]] = []

    def sdk_tool(schema: dict[str, Any]) -> Any:
        fn = schema["function"]

        async def invoke(_ctx: Any, arguments: str) -> str:
            args = json.loads(arguments)
            calls.append((fn["name"], args))
            return str(impl[fn["name"]](args))

        return agents.FunctionTool(
            name=fn["name"],
            description=fn["description"],
            params_json_schema=fn["parameters"],
            on_invoke_tool=invoke,
            strict_json_schema=False,
        )

    async def run() -> Any:
        # the client closes in this loop: one left to the garbage collector closes inside a later test's loop
        async with openai.AsyncOpenAI(base_url=base_url, api_key=KEY) as client:
            agent = agents.Agent(
                name="tiny",
                instructions=INSTRUCTIONS,
                model=agents.OpenAIChatCompletionsModel(model=MODEL, openai_client=client),
                tools=[sdk_tool(s) for s in tool_schemas],
            )
            return await agents.Runner.run(agent, "How many cm is 150 m?", max_turns=4)

    result = asyncio.run(run())
    assert calls == [("convert_units", {"value": 150, "from_unit": "m", "to_unit": "cm"})]
    assert extract_answer(str(result.final_output)) == "15000 cm"


# ---------------------------------------------------------------------------------------- bad input

_TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
_USER = [{"role": "user", "content": "hi"}]
BAD: list[tuple[str, str, dict[str, str] | None, Any, int, str | None]] = [
    # (what, path, headers (None: the right key), body, status, error code)
    ("no API key", "/chat/completions", {}, {"model": MODEL, "messages": _USER}, 401, "invalid_api_key"),
    (
        "wrong API key",
        "/chat/completions",
        {"Authorization": "Bearer nope"},
        {"model": MODEL, "messages": _USER},
        401,
        "invalid_api_key",
    ),
    (
        "unknown model",
        "/chat/completions",
        None,
        {"model": "gpt-9", "messages": _USER},
        404,
        "model_not_found",
    ),
    ("body is not JSON", "/chat/completions", None, b"{not json", 400, "invalid_json"),
    ("body is a list", "/chat/completions", None, [1, 2], 400, "invalid_type"),
    ("no messages", "/chat/completions", None, {"model": MODEL}, 400, "invalid_type"),
    (
        "unknown role",
        "/chat/completions",
        None,
        {"model": MODEL, "messages": [{"role": "robot", "content": "x"}]},
        400,
        "invalid_value",
    ),
    (
        "image content",
        "/chat/completions",
        None,
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
        },
        400,
        "unsupported_content",
    ),
    (
        "tool call arguments not an object",
        "/chat/completions",
        None,
        {
            "model": MODEL,
            "messages": [
                *_USER,
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {"id": "1", "type": "function", "function": {"name": "f", "arguments": "[1, 2]"}}
                    ],
                },
                {"role": "tool", "tool_call_id": "1", "content": "x"},
            ],
        },
        400,
        "invalid_messages",
    ),
    (
        "tool message without tool_call_id",
        "/chat/completions",
        None,
        {"model": MODEL, "messages": [*_USER, {"role": "tool", "content": "x"}]},
        400,
        "invalid_value",
    ),
    (
        "tool parameters not a schema",
        "/chat/completions",
        None,
        {
            "model": MODEL,
            "messages": _USER,
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "f",
                        "parameters": {"type": "object", "properties": {"a": {"type": "strng"}}},
                    },
                }
            ],
        },
        400,
        "invalid_tool_schema",
    ),
    (
        "tool parameters not an object schema",
        "/chat/completions",
        None,
        {
            "model": MODEL,
            "messages": _USER,
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}],
        },
        400,
        "invalid_tool_schema",
    ),
    (
        "tool without a name",
        "/chat/completions",
        None,
        {"model": MODEL, "messages": _USER, "tools": [{"type": "function", "function": {"parameters": {}}}]},
        400,
        "invalid_tool_schema",
    ),
    (
        "tool_choice names an unknown tool",
        "/chat/completions",
        None,
        {
            "model": MODEL,
            "messages": _USER,
            "tools": [_TOOL],
            "tool_choice": {"type": "function", "function": {"name": "g"}},
        },
        400,
        "invalid_value",
    ),
    (
        "temperature out of range",
        "/chat/completions",
        None,
        {"model": MODEL, "messages": _USER, "temperature": -1},
        400,
        "invalid_value",
    ),
    (
        "seed past 64 bits",
        "/completions",
        None,
        {"model": MODEL, "prompt": "hi", "seed": 2**70},
        400,
        "invalid_value",
    ),
    (
        "max_tokens 0",
        "/chat/completions",
        None,
        {"model": MODEL, "messages": _USER, "max_tokens": 0},
        400,
        "invalid_value",
    ),
    (
        "n > 1",
        "/chat/completions",
        None,
        {"model": MODEL, "messages": _USER, "n": 2},
        400,
        "unsupported_value",
    ),
    (
        "five stop strings",
        "/chat/completions",
        None,
        {"model": MODEL, "messages": _USER, "stop": list("abcde")},
        400,
        "invalid_value",
    ),
    (
        "stream is not a boolean",
        "/chat/completions",
        None,
        {"model": MODEL, "messages": _USER, "stream": "yes"},
        400,
        "invalid_type",
    ),
    (
        "unknown reasoning_effort",
        "/chat/completions",
        None,
        {"model": MODEL, "messages": _USER, "reasoning_effort": "extreme"},
        400,
        "invalid_value",
    ),
    (
        "context too long",
        "/chat/completions",
        None,
        {"model": MODEL, "messages": [{"role": "user", "content": "word " * 70000}]},
        400,
        "context_length_exceeded",
    ),
    (
        "prompt + max_tokens past the context",
        "/completions",
        None,
        {"model": MODEL, "prompt": "hi", "max_tokens": 70000},
        400,
        "context_length_exceeded",
    ),
    (
        "token id outside the vocabulary",
        "/completions",
        None,
        {"model": MODEL, "prompt": [5, 99999]},
        400,
        "invalid_value",
    ),
    ("empty prompt", "/completions", None, {"model": MODEL, "prompt": ""}, 400, "invalid_value"),
    (
        "logprobs asked for",
        "/completions",
        None,
        {"model": MODEL, "prompt": "hi", "logprobs": 3},
        400,
        "unsupported_parameter",
    ),
    ("GET on a POST route", "/chat/completions", None, None, 405, "method_not_allowed"),
    ("unknown route", "/embeddings", None, {"model": MODEL, "input": "x"}, 404, "not_found"),
]


def test_bad_requests_get_typed_openai_errors(base_url: str, engine: Engine) -> None:
    rows = []
    with httpx.Client(timeout=30) as http:
        for what, path, headers, body, status, code in BAD:
            h = {"Authorization": f"Bearer {KEY}"} if headers is None else headers
            if body is None:
                r = http.get(base_url + path, headers=h)
            elif isinstance(body, bytes):
                r = http.post(
                    base_url + path, headers={**h, "content-type": "application/json"}, content=body
                )
            else:
                r = http.post(base_url + path, headers=h, json=body)
            err = r.json().get("error", {})
            rows.append((what, r.status_code, err.get("type"), err.get("code"), err.get("message", "")[:70]))
            assert (r.status_code, err.get("code")) == (status, code), (what, r.status_code, err)
            assert isinstance(err.get("message"), str) and err["message"] and "type" in err and "param" in err
        # the server is still serving, and nothing is left running
        ok = http.post(
            base_url + "/completions",
            headers={"Authorization": f"Bearer {KEY}"},
            json={"model": MODEL, "prompt": "hi", "max_tokens": 2},
        )
        assert ok.status_code == 200
    assert len(rows) >= 12
    print("\n" + "\n".join(f"{w:40} {s} {t:22} {c:24} {m}" for w, s, t, c, m in rows))
    # the official client maps them to its typed exceptions
    client = openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    client = openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=_USER)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[])
    assert info.value.code == "invalid_type" and info.value.param == "messages"
    _wait_idle(engine)


_VALID_CHAT: dict[str, Any] = {
    "model": MODEL,
    "max_tokens": 1,
    "messages": [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u"},
        {
            "role": "assistant",
            "content": "a",
            "reasoning_content": "r",
            "tool_calls": [
                {"id": "1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "1", "content": "res"},
    ],
    "tools": [_TOOL],
    "tool_choice": "auto",
    "temperature": 0.5,
    "top_p": 0.9,
    "seed": 1,
    "stop": ["zz"],
    "reasoning_effort": "high",
}


def _paths(obj: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield at
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        yield from _paths(v, (*at, k))


def _replaced(obj: Any, at: tuple[Any, ...], value: Any) -> Any:
    if not at:
        return value
    out = json.loads(json.dumps(obj))
    cur = out
    for k in at[:-1]:
        cur = cur[k]
    cur[at[-1]] = value
    return out


def test_no_malformed_request_crashes_the_server(base_url: str, engine: Engine) -> None:
    """Every field of a valid request (nested ones included) replaced by values of the wrong shape: each
    answer is a 200 or a typed 4xx error, never a 5xx, and nothing is left running."""
    weird: list[Any] = [None, -1, "x", [], {"a": 1}, True]
    seen = 0
    with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {KEY}"}) as http:
        for at in _paths(_VALID_CHAT):
            for value in weird:
                r = http.post(base_url + "/chat/completions", json=_replaced(_VALID_CHAT, at, value))
                seen += 1
                assert r.status_code < 500, (at, value, r.text)
                if r.status_code != 200:
                    assert set(r.json()["error"]) == {"message", "type", "param", "code"}, (at, value)
        for key in (
            "prompt",
            "max_tokens",
            "stop",
            "skip_special_tokens",
            "return_token_ids",
            "stream_options",
        ):
            for value in [*weird, [[1, 2]], ["a", "b"], [1, "a"]]:
                body = {"model": MODEL, "prompt": "hi", "max_tokens": 1, key: value}
                r = http.post(base_url + "/completions", json=body)
                seen += 1
                assert r.status_code < 500, (key, value, r.text)
    assert seen > 150
    _wait_idle(engine)


# ------------------------------------------------------------------------ disconnects and concurrency


def _wait_idle(engine: Engine, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while (s := engine.stats()).running or s.waiting:
        assert time.monotonic() < deadline, f"sequences still held: {s}"
        time.sleep(0.05)


_CLIENT = textwrap.dedent(
    """
    import sys, httpx
    url, key = sys.argv[1], sys.argv[2]
    body = {"model": "agentkit-tiny", "prompt": "hello", "max_tokens": 20000, "ignore_eos": True,
            "stream": %s}
    with httpx.stream("POST", url, json=body, headers={"Authorization": "Bearer " + key}, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                print("got", flush=True)
    """
)


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_killed_mid_request_frees_its_sequence(base_url: str, engine: Engine, stream: bool) -> None:
    _wait_idle(engine)
    steps_before = engine.stats().steps
    proc = subprocess.Popen(
        [sys.executable, "-c", _CLIENT % stream, base_url + "/completions", KEY],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        if stream:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "got"  # tokens are flowing
        else:
            deadline = time.monotonic() + 30
            while engine.stats().running == 0:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        assert engine.stats().running == 1
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    _wait_idle(engine)  # freed at once, long before its 20000 tokens
    assert engine.stats().steps - steps_before < 20000
    assert engine.stats().state_bytes == 0


def test_32_concurrent_streaming_clients_each_get_their_own_answer(base_url: str, engine: Engine) -> None:
    tools = all_tools()
    schemas = Agent("scripted:", [tools[n] for n in TOOLS], instructions=INSTRUCTIONS).tool_schemas
    meters = [100 + 7 * i for i in range(32)]

    async def one(client: openai.AsyncOpenAI, m: int) -> tuple[str, list[tuple[str, str]], str | None]:
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=_question(m),
            tools=schemas,
            stream=True,  # type: ignore[arg-type]
        )
        reasoning, calls, finish = "", {}, None
        async for chunk in stream:
            for c in chunk.choices:
                reasoning += getattr(c.delta, "reasoning_content", None) or ""
                for tc in c.delta.tool_calls or []:
                    slot = calls.setdefault(tc.index, ["", ""])
                    slot[0] += (tc.function.name if tc.function else None) or ""
                    slot[1] += (tc.function.arguments if tc.function else None) or ""
                finish = c.finish_reason or finish
        return reasoning, [(n, a) for n, a in calls.values()], finish

    async def all_of_them() -> list[Any]:
        async with openai.AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=300) as client:
            return await asyncio.gather(*(one(client, m) for m in meters))

    steps_before = engine.stats().steps
    started = time.monotonic()
    results = asyncio.run(all_of_them())
    elapsed = time.monotonic() - started
    steps = engine.stats().steps - steps_before
    for m, (reasoning, calls, finish) in zip(meters, results, strict=True):
        assert finish == "tool_calls", (m, reasoning, calls)
        ((name, args),) = calls
        assert name == "convert_units" and json.loads(args) == {"value": m, "from_unit": "m", "to_unit": "cm"}
    # they were decoded together: far fewer engine steps than 32 one-by-one turns of ~87 tokens
    assert steps < 32 * 40, (steps, elapsed)
    # and each equals the same request made alone (batching changes nothing in a sequence's output)
    client = openai.OpenAI(base_url=base_url, api_key=KEY)
    for k in (0, 13, 31):
        alone = client.chat.completions.create(model=MODEL, messages=_question(meters[k]), tools=schemas)  # type: ignore[arg-type]
        msg = alone.choices[0].message
        assert results[k][0] == msg.reasoning_content
        assert results[k][1] == [(c.function.name, c.function.arguments) for c in msg.tool_calls or []]
    _wait_idle(engine)


# ------------------------------------------------------------------------------ pieces, without a server


def test_tool_call_arguments_stream_as_prefixes_of_the_final_string() -> None:
    """Whatever the chunking, the streamed `arguments` pieces of each call add up to the parser's final
    arguments string, and every intermediate sum is a prefix of it (a client never has to take text back)."""
    from agentkit.serve.chat import ChatTurn

    calls = [
        {
            "function": {
                "name": "write",
                "arguments": json.dumps({"path": 'a "b"\n\\c', "text": "é ✓ \t </x>"}),
            }
        },
        {
            "function": {
                "name": "mix",
                "arguments": json.dumps({"n": [1, {"k": 2.5}], "s": "after a held one"}),
            }
        },
        {"function": {"name": "empty", "arguments": json.dumps({"a": "", "b": "x"})}},
        {"function": {"name": "none", "arguments": "{}"}},
    ]
    text = dsml.render_assistant_turn(
        {"reasoning_content": "r", "content": "c", "tool_calls": calls}, "thinking"
    )
    for size in (1, 3, 7, len(text)):
        turn = ChatTurn("thinking")
        deltas = []
        for i in range(0, len(text), size):
            deltas += turn.feed(text[i : i + size])
        deltas += turn.close(eos=False)
        streamed: dict[int, str] = {}
        for d in deltas:
            for tc in d.get("tool_calls", []):
                streamed[tc["index"]] = streamed.get(tc["index"], "") + tc["function"].get("arguments", "")
                final = (
                    turn.calls[tc["index"]]["function"]["arguments"]
                    if tc["index"] < len(turn.calls)
                    else None
                )
                assert final is None or final.startswith(streamed[tc["index"]])
        assert [streamed[i] for i in range(4)] == [c["function"]["arguments"] for c in turn.calls]
        assert [json.loads(streamed[i]) for i in range(4)] == [
            json.loads(c["function"]["arguments"]) for c in calls
        ]
        assert turn.message()["reasoning_content"] == "r" and turn.message()["content"] == "c"


def test_modes_and_stop_strings(base_url: str, engine: Engine, tool_schemas: list[dict[str, Any]]) -> None:
    """Each way of choosing the V4 mode renders the encoder's prompt for that mode; stop strings cut."""
    tok = engine.tokenizer
    assert tok is not None
    client = openai.OpenAI(base_url=base_url, api_key=KEY)
    messages = [{**_question(3)[0], "tools": tool_schemas}, _question(3)[1]]

    def prompt_len(mode: str, effort: str | None) -> int:
        return len(
            tok.encode(dsml.encode_messages(messages, mode, reasoning_effort=effort), allow_special=True)
        )

    cases = [
        ({"reasoning_effort": "none"}, ("chat", None)),
        ({"reasoning_effort": "medium"}, ("thinking", None)),
        ({"reasoning_effort": "max"}, ("thinking", "max")),
        ({"extra_body": {"chat_template_kwargs": {"thinking": False}}}, ("chat", None)),
        ({"extra_body": {"thinking": {"type": "disabled"}}}, ("chat", None)),
        ({}, ("thinking", None)),
    ]
    for kwargs, (mode, effort) in cases:
        r = client.chat.completions.create(  # type: ignore[call-overload]
            model=MODEL, messages=_question(3), tools=tool_schemas, max_tokens=4, **kwargs
        )
        assert r.usage.prompt_tokens == prompt_len(mode, effort), kwargs
        assert (getattr(r.choices[0].message, "reasoning_content", None) is not None) == (mode == "thinking")
    full = client.chat.completions.create(
        model=MODEL, messages=_question(3), tools=tool_schemas, max_tokens=40
    )  # type: ignore[arg-type]
    reasoning = full.choices[0].message.reasoning_content or ""
    stop = reasoning.split()[2]  # a word from the middle of the reasoning
    cut = client.chat.completions.create(  # type: ignore[call-overload]
        model=MODEL, messages=_question(3), tools=tool_schemas, max_tokens=40, stop=[stop]
    )
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.reasoning_content == reasoning[: reasoning.index(stop)]


def test_the_agentkit_serve_command() -> None:
    """`agentkit serve` as users start it: a process serving the shipped model, gone on SIGINT."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "AGENTKIT_API_KEY": "k1"}
    cmd = [sys.executable, "-m", "agentkit.cli", "serve", "--port", str(port), "--default-max-tokens", "8"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k1", max_retries=0)
        deadline = time.monotonic() + 60
        while True:
            try:
                assert [m.id for m in client.models.list()] == [MODEL]
                break
            except openai.APIConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        r = client.chat.completions.create(model=MODEL, messages=_question(5))  # type: ignore[arg-type]
        assert r.usage is not None and r.usage.completion_tokens <= 8  # --default-max-tokens
        with pytest.raises(openai.AuthenticationError):  # the key came from $AGENTKIT_API_KEY
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k2", max_retries=0).models.list()
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
