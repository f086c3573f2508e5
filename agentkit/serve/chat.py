"""Chat completions over the engine: messages rendered by the DSML encoder, the completion read back by
the DSML stream parser into `reasoning_content`, `content` and `tool_calls`.

Why the project's own codec on both sides: the prompt must be byte-identical to what the model was
trained on (and to what agentkit's embedded backend feeds it, so a run through this server and the same
run embedded see the same tokens), and the parser is the one every agentkit backend uses, so a tool call
streams out as soon as its invoke's arguments arrive rather than after the whole turn.

Tool-call arguments stream as the prefix of the final `arguments` string the parser assembles (DeepSeek's
byte-compatible form, `ToolCall.arguments_json`): a string parameter's value is JSON-escaped piece by piece
as it arrives; a non-string (JSON) parameter is held until its invoke closes, since whether it is valid
JSON (and so how it is written) is only known then; everything after a held parameter is held with it.

`tool_choice`: "none" bans the DSML marker token, so no call can start; "required" and a named function
force the opening of a tool-call block (and the name) right after the turn's `</think>` with a logits
processor, then let the model write the arguments.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import torch

from agentkit.dsml import encode as dsml_encode
from agentkit.dsml.errors import DSMLEncodeError
from agentkit.dsml.stream import StreamParser
from agentkit.dsml.tokens import DSML, EOS, THINK_END, TOOL_CALLS_OPEN
from agentkit.dsml.types import (
    ContentDelta,
    Event,
    ParameterDelta,
    ParseError,
    ReasoningDelta,
    ToolCall,
    ToolCallEnd,
    ToolCallStart,
    to_json,
)
from agentkit.serve.errors import bad_request
from agentkit.serve.generation import Generation, Processor, Runner
from agentkit.serve.requests import ChatRequest


def render(req: ChatRequest) -> tuple[str, str]:
    """(prompt text, thinking mode) for a request, by the project's encoder."""
    mode = "chat" if req.thinking == "off" else "thinking"
    try:
        text = dsml_encode.encode_messages(
            req.messages,
            mode,
            drop_thinking=req.drop_thinking,
            reasoning_effort="max" if req.thinking == "max" else None,
        )
    except DSMLEncodeError as exc:
        raise bad_request(f"the messages cannot be rendered: {exc}", "messages", "invalid_messages") from exc
    return text, mode


def tool_choice_processor(runner: Runner, req: ChatRequest, mode: str) -> Processor | None:
    """The logits processor that enforces `tool_choice` (see the module docstring); None for "auto"."""
    if req.tool_choice == "auto" or (req.tool_choice == "none" and not req.tools):
        return None
    dsml_id = runner.tokenizer.token_id(DSML)
    if req.tool_choice == "none":

        def ban(generated: list[int], logits: torch.Tensor) -> torch.Tensor:
            logits = logits.clone()
            logits[dsml_id] = float("-inf")
            return logits

        return ban
    opening = f"\n\n{TOOL_CALLS_OPEN}\n<{DSML}invoke name=" + '"'
    if req.tool_name is not None:
        opening += req.tool_name + '"'
    forced = runner.encode(opening)
    think_end = runner.tokenizer.token_id(THINK_END) if mode == "thinking" else None
    where: dict[str, int] = {}  # generated-token index where the forced text starts
    if think_end is None:
        where["start"] = 0

    def force(generated: list[int], logits: torch.Tensor) -> torch.Tensor:
        if "start" not in where:
            if not generated or generated[-1] != think_end:
                return logits
            where["start"] = len(generated)
        i = len(generated) - where["start"]
        if 0 <= i < len(forced):
            out = torch.full_like(logits, float("-inf"))
            out[forced[i]] = 0.0
            return out
        return logits

    return force


@dataclass
class _Args:
    """The streamed prefix of one call's `arguments` string (see the module docstring)."""

    sent: str = ""
    current: str | None = None
    n_params: int = 0
    holding: bool = False
    open_string: bool = False

    def delta(self, ev: ParameterDelta) -> str:
        out = ""
        if ev.name != self.current:
            if self.open_string:
                out += '"'
                self.open_string = False
            if not self.holding and not ev.string:
                self.holding = True
            elif not self.holding:
                out += ("{" if self.n_params == 0 else ", ") + to_json(ev.name) + ': "'
                self.open_string = True
            self.current = ev.name
            self.n_params += 1
        if self.open_string and ev.text:
            out += json.dumps(ev.text, ensure_ascii=False)[1:-1]
        self.sent += out
        return out

    def end(self, call: ToolCall) -> str:
        final = call.arguments_json
        if not final.startswith(self.sent):  # a tolerant repair changed a value already streamed
            return ""
        rest = final[len(self.sent) :]
        self.sent = final
        return rest


@dataclass
class ChatTurn:
    """One chat completion: events from the parser become OpenAI deltas; the message at the end."""

    mode: str
    parser: StreamParser = field(init=False)
    reasoning: list[str] = field(default_factory=list)
    content: list[str] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    args: dict[int, _Args] = field(default_factory=dict)
    ids: dict[int, str] = field(default_factory=dict)
    failed: bool = False

    def __post_init__(self) -> None:
        self.parser = StreamParser(self.mode, strict=False)

    def feed(self, text: str) -> list[dict[str, Any]]:
        return self._deltas(self.parser.feed(text)) if text and not self.failed else []

    def close(self, eos: bool) -> list[dict[str, Any]]:
        out = self.feed(EOS) if eos else []
        return out + self._deltas(self.parser.close())

    def _deltas(self, events: list[Event]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for ev in events:
            if self.failed:
                break
            if isinstance(ev, ReasoningDelta) and ev.text:
                self.reasoning.append(ev.text)
                out.append({"reasoning_content": ev.text})
            elif isinstance(ev, ContentDelta) and ev.text:
                self.content.append(ev.text)
                out.append({"content": ev.text})
            elif isinstance(ev, ToolCallStart):
                call_id = "call_" + secrets.token_hex(12)
                self.ids[ev.index], self.args[ev.index] = call_id, _Args()
                fn = {"name": ev.name, "arguments": ""}
                out.append(
                    {"tool_calls": [{"index": ev.index, "id": call_id, "type": "function", "function": fn}]}
                )
            elif isinstance(ev, ParameterDelta) and ev.index in self.args:
                piece = self.args[ev.index].delta(ev)
                if piece:
                    out.append({"tool_calls": [{"index": ev.index, "function": {"arguments": piece}}]})
            elif isinstance(ev, ToolCallEnd) and ev.index in self.args:
                piece = self.args[ev.index].end(ev.call)
                self.calls.append(
                    {
                        "id": self.ids[ev.index],
                        "type": "function",
                        "function": {"name": ev.call.name, "arguments": ev.call.arguments_json},
                    }
                )
                if piece:
                    out.append({"tool_calls": [{"index": ev.index, "function": {"arguments": piece}}]})
            elif isinstance(ev, ParseError):
                self.failed = True
        return out

    def message(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"role": "assistant", "content": "".join(self.content) or None}
        if self.mode == "thinking":
            msg["reasoning_content"] = "".join(self.reasoning)
        if self.calls:
            msg["tool_calls"] = self.calls
        return msg

    def finish_reason(self, gen: Generation) -> str:
        if gen.finish_reason == "length":
            return "length"
        return "tool_calls" if self.calls else "stop"


def _chunk(
    rid: str, created: int, model: str, delta: dict[str, Any] | None, finish: str | None
) -> dict[str, Any]:
    choices = (
        [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    )
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
    }


async def stream_chunks(req: ChatRequest, gen: Generation, mode: str) -> AsyncGenerator[dict[str, Any], None]:
    """The SSE chunk objects of a streamed chat completion (the caller writes them and `[DONE]`)."""
    rid, created = "chatcmpl-" + secrets.token_hex(12), int(time.time())
    turn = ChatTurn(mode)
    yield _chunk(rid, created, req.model, {"role": "assistant", "content": ""}, None)
    async with contextlib.aclosing(gen.pieces()) as pieces:  # closed (request cancelled) if we are
        async for text, _ids in pieces:
            for delta in turn.feed(text):
                yield _chunk(rid, created, req.model, delta, None)
    for delta in turn.close(gen.ended_on_eos):
        yield _chunk(rid, created, req.model, delta, None)
    yield _chunk(rid, created, req.model, {}, turn.finish_reason(gen))
    if req.include_usage:
        last = _chunk(rid, created, req.model, None, None)
        last["usage"] = gen.usage().to_openai()
        yield last


async def complete(req: ChatRequest, gen: Generation, mode: str) -> dict[str, Any]:
    """The response object of a non-streamed chat completion."""
    turn = ChatTurn(mode)
    async with contextlib.aclosing(gen.pieces()) as pieces:
        async for text, _ids in pieces:
            turn.feed(text)
    turn.close(gen.ended_on_eos)
    return {
        "id": "chatcmpl-" + secrets.token_hex(12),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": req.model,
        "choices": [
            {
                "index": 0,
                "message": turn.message(),
                "logprobs": None,
                "finish_reason": turn.finish_reason(gen),
            }
        ],
        "usage": gen.usage().to_openai(),
    }


__all__ = ["ChatTurn", "complete", "render", "stream_chunks", "tool_choice_processor"]
