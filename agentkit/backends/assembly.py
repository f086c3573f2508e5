"""One assistant turn out of a backend's chunk stream, whatever shape the backend streams in.

Text backends stream raw DSML; the tolerant StreamParser finds the reasoning, the content and each tool
call in it. Chat backends stream reasoning and content apart, plus structured tool-call deltas (OpenAI
style: the pieces of one call share an index, and a call is complete when a later index starts or the
stream ends); their content may itself carry DSML, which the parser reads as calls. Both shapes come
out as the same run events and the same `Turn`, and every call is handed on the moment it closes, so
the loop can start it while the model is still writing.

This is also where the parse policy (`dsml.policy`) is applied to each call: a call is dispatched
(`on_call`) only if its name is a tool name and no repair changed what it means; otherwise it is
refused (`on_refused`, with the reason the model will read). Meaning-changing repairs outside any call
(a block with no call, text or an unknown tag in the block) are collected in `Turn.lost` for the loop's
per-turn decision; meaning-preserving repairs are only logged.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from agentkit import events as ev
from agentkit.dsml import policy
from agentkit.dsml import types as dsml_types
from agentkit.dsml.stream import StreamParser
from agentkit.messages import ToolCall

from .base import Chunk, ContentChunk, Finish, RawText, ReasoningChunk, ToolCallChunk

Emit = Callable[[ev.Event], Awaitable[None]]
OnCall = Callable[[int, ToolCall], None]
OnRefused = Callable[[int, ToolCall, str], None]
log = logging.getLogger("agentkit.dsml")


@dataclass(slots=True)
class Turn:
    """What one model call produced: its raw text (text backends), reasoning, content and calls."""

    raw: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    content: list[str] = field(default_factory=list)
    calls: list[ToolCall] = field(default_factory=list)
    finish: Finish | None = None
    parse_error: str | None = None
    first_chunk_s: float | None = None  # seconds from the request to the first chunk
    refused: list[int] = field(default_factory=list)  # indexes of calls not run (parse policy)
    lost: list[str] = field(default_factory=list)  # meaning-changing repairs outside any call

    @property
    def malformed(self) -> bool:
        """The model wrote something the run could not take as written (it gets told so)."""
        return bool(self.refused or self.lost or self.parse_error)

    def to_dict(self) -> dict[str, Any]:
        """Plain data, so a durable run can keep a finished model turn across a crash."""
        f = self.finish
        return {
            "raw": self.raw, "token_ids": self.token_ids, "reasoning": self.reasoning,
            "content": self.content, "calls": [c.to_dict() for c in self.calls],
            "finish": None if f is None else [f.reason, f.prompt_tokens, f.cached_tokens,
                                              f.prefilled_tokens, f.completion_tokens, f.decode_steps,
                                              f.drafted_tokens, f.accepted_tokens,
                                              f.lookup_drafted_tokens, f.lookup_accepted_tokens],
            "parse_error": self.parse_error, "first_chunk_s": self.first_chunk_s,
            "refused": self.refused, "lost": self.lost,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Turn:
        f = data.get("finish")
        return cls(
            raw=list(data["raw"]), token_ids=list(data["token_ids"]), reasoning=list(data["reasoning"]),
            content=list(data["content"]), calls=[ToolCall.from_dict(c) for c in data["calls"]],
            finish=None if f is None else Finish(f[0], *f[1:]), parse_error=data.get("parse_error"),
            first_chunk_s=data.get("first_chunk_s"), refused=list(data.get("refused", [])),
            lost=list(data.get("lost", [])),
        )  # fmt: skip


@dataclass(slots=True)
class _ChatCall:
    """A structured call being assembled from deltas (chat backends)."""

    id: str | None = None
    name: str | None = None
    arguments: list[str] = field(default_factory=list)
    started: bool = False


def stream_parser(mode: str) -> StreamParser:
    """The parser every backend's DSML goes through: tolerant (real V4 output is not always canonical)."""
    return StreamParser(mode, strict=False)


class TurnAssembler:
    """Feed it chunks; it fills `turn`, emits the run's events and hands on each call as it closes."""

    def __init__(self, step: int, mode: str, emit: Emit, on_call: OnCall, on_refused: OnRefused) -> None:
        self.step = step
        self.mode = mode
        self.turn = Turn()
        self._emit = emit
        self._on_call = on_call
        self._on_refused = on_refused
        self._t0 = time.monotonic()
        self._text: StreamParser | None = None
        self._content: StreamParser | None = None
        self._chat: dict[int, _ChatCall] = {}
        self._call_open = False
        self._call_issues: list[str] = []
        self._in_reasoning = False

    async def feed(self, chunk: Chunk) -> None:
        turn = self.turn
        if turn.first_chunk_s is None:
            turn.first_chunk_s = time.monotonic() - self._t0
        if isinstance(chunk, RawText):
            if self._text is None:
                self._text = stream_parser(self.mode)
            turn.raw.append(chunk.text)
            if chunk.token_ids:
                turn.token_ids.extend(chunk.token_ids)
            await self._parsed(self._text.feed(chunk.text), 0)
        elif isinstance(chunk, ReasoningChunk):
            turn.reasoning.append(chunk.text)
            await self._emit(ev.ReasoningDelta(self.step, chunk.text))
        elif isinstance(chunk, ContentChunk):
            if self._content is None:
                self._content = stream_parser("chat")
            await self._parsed(self._content.feed(chunk.text), len(turn.calls))
        elif isinstance(chunk, ToolCallChunk):
            await self._chat_delta(chunk)
        elif isinstance(chunk, Finish):
            turn.finish = chunk

    async def close(self) -> Turn:
        """The stream ended: flush the parsers, close open chat calls, read calls left in reasoning."""
        turn = self.turn
        if self._text is not None:
            await self._parsed(self._text.close(), 0)
        if self._content is not None:
            await self._parsed(self._content.close(), len(turn.calls))
        for index in sorted(self._chat):
            await self._close_chat_call(index)
        if not turn.calls and any("DSML" in r for r in turn.reasoning):
            await self._calls_in_reasoning()
        return turn

    # -- calls ------------------------------------------------------------------------------------

    def _from_parser(self, index: int, parsed: Any) -> ToolCall:
        return ToolCall(f"call_{self.step}_{index}", parsed.name, dict(parsed.arguments))

    async def _call_closed(self, index: int, call: ToolCall, refusal: str | None) -> None:
        self.turn.calls.append(call)
        await self._emit(ev.ToolCallEnd(self.step, index, call))
        if refusal is None:
            self._on_call(index, call)
            return
        self.turn.refused.append(index)
        why = f"call to {call.name!r} not run: {refusal}"
        await self._emit(ev.ErrorEvent(self.step, "malformed_call", why))
        self._on_refused(index, call, refusal)

    async def _warning(self, w: dsml_types.ParseWarning) -> None:
        """The parse policy for one repair: silent if it kept the meaning, else tied to a call or the turn."""
        if not policy.changes_meaning(w.code):
            log.info("DSML repair (meaning kept): %s", w.message)
            return
        if w.code == "call_in_reasoning":
            self._in_reasoning = True
        elif self._call_open:
            self._call_issues.append(w.message)
        else:
            self.turn.lost.append(w.message)
        await self._emit(ev.ErrorEvent(self.step, "malformed_call", w.message))

    async def _parsed(self, events: list[Any], offset: int) -> None:
        turn, step = self.turn, self.step
        for e in events:
            if isinstance(e, dsml_types.ReasoningDelta):
                turn.reasoning.append(e.text)
                await self._emit(ev.ReasoningDelta(step, e.text))
            elif isinstance(e, dsml_types.ContentDelta):
                turn.content.append(e.text)
                await self._emit(ev.TextDelta(step, e.text))
            elif isinstance(e, dsml_types.ToolCallStart):
                idx = offset + e.index
                self._call_open, self._call_issues = True, []
                await self._emit(ev.ToolCallStart(step, idx, f"call_{step}_{idx}", e.name))
            elif isinstance(e, dsml_types.ParameterDelta):
                await self._emit(ev.ToolCallArgDelta(step, offset + e.index, e.name, e.text))
            elif isinstance(e, dsml_types.ToolCallEnd):
                idx = offset + e.index
                refusal = policy.refusal(e.call.name, self._call_issues, self._in_reasoning)
                self._call_open = False
                await self._call_closed(idx, self._from_parser(idx, e.call), refusal)
            elif isinstance(e, dsml_types.ToolCallTorn):
                self._call_open = False
                turn.parse_error = f"the output ended inside the call to {e.torn.name!r}"
                await self._emit(ev.ErrorEvent(step, "torn_call", turn.parse_error))
            elif isinstance(e, dsml_types.ParseWarning):
                await self._warning(e)
            elif isinstance(e, dsml_types.ParseError):
                turn.parse_error = e.reason
                await self._emit(ev.ErrorEvent(step, "parse_error", e.reason))

    async def _chat_delta(self, chunk: ToolCallChunk) -> None:
        for other in [i for i in self._chat if i < chunk.index]:
            await self._close_chat_call(other)
        call = self._chat.setdefault(chunk.index, _ChatCall())
        call.id = call.id or chunk.id
        call.name = call.name or chunk.name
        index = len(self.turn.calls)
        if not call.started and call.name:
            call.started = True
            cid = call.id or f"call_{self.step}_{index}"
            await self._emit(ev.ToolCallStart(self.step, index, cid, call.name))
        if chunk.arguments:
            call.arguments.append(chunk.arguments)
            await self._emit(ev.ToolCallArgDelta(self.step, index, None, chunk.arguments))

    async def _close_chat_call(self, key: int) -> None:
        part = self._chat.pop(key)
        raw = "".join(part.arguments) or "{}"
        try:
            args = json.loads(raw)
        except json.JSONDecodeError:
            args = None
        index = len(self.turn.calls)
        call = ToolCall(
            part.id or f"call_{self.step}_{index}",
            part.name or "",
            args if isinstance(args, dict) else {},
            None if isinstance(args, dict) else raw,
        )
        await self._call_closed(index, call, policy.refusal(call.name, [], in_reasoning=False))

    async def _calls_in_reasoning(self) -> None:
        """A tool block written before `</think>` (chat backends hand it over as reasoning): its calls are
        read so the model can be told exactly which were not run, and why; they are never run."""
        turn = self.turn
        reasoning = "".join(turn.reasoning)
        start = reasoning.find("<")
        while start != -1 and "DSML" not in reasoning[start : start + 12]:
            start = reasoning.find("<", start + 1)
        if start == -1:
            return
        parser = stream_parser("chat")
        why = policy.refusal("", [], in_reasoning=True)
        for e in [*parser.feed("\n\n" + reasoning[start:]), *parser.close()]:
            if isinstance(e, dsml_types.ToolCallEnd):
                idx = len(turn.calls)
                await self._call_closed(idx, self._from_parser(idx, e.call), why)
        if turn.calls:
            turn.reasoning = [reasoning[:start].rstrip()]
