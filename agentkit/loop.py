"""The agent loop: generate -> parse -> dispatch tools -> append results, until an answer or a limit.

One `Loop` drives one `RunState`. Its central promise is the append-only transcript: a step appends
the model's output verbatim, then one user turn of `<tool_result>` blocks in call order (plus any note
from the framework) and the assistant prefix, all rendered by the DSML codec's suffix helpers. So after
N steps the transcript equals `encode_messages` of the message list whenever the model's output was
canonical DSML, and nothing is ever re-rendered except by an explicit context compaction.

Tool calls are dispatched the moment the stream parser closes their `invoke`, while the model is still
writing the rest of the block; calls of one block run concurrently in a task group unless a tool is
`sequential`. The task group lives inside the step, so cancelling the run cancels every tool in flight.
"""

from __future__ import annotations

import inspect
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from agentkit import events as ev
from agentkit.backends.base import (
    ContentChunk,
    Finish,
    ModelError,
    ModelRequest,
    RawText,
    ReasoningChunk,
    ToolCallChunk,
    encoder_mode,
)
from agentkit.dsml import encode as dsml_encode
from agentkit.dsml import types as dsml_types
from agentkit.dsml.tokens import EOS, TOOL_RESULT_CLOSE, TOOL_RESULT_OPEN, USER
from agentkit.limits import Usage
from agentkit.messages import (
    AssistantMessage,
    Message,
    ToolCall,
    ToolMessage,
    Transcript,
    UserMessage,
    message_to_dict,
)
from agentkit.session import BlockResult, RunState

if TYPE_CHECKING:
    from agentkit.agent import Agent
    from agentkit.tools.context import RunContext

Emit = Callable[[ev.Event], Awaitable[None]]
Approver = Callable[[ToolCall], "bool | str | Awaitable[bool | str]"]

LIMIT_NOTE = (
    "[agentkit] The run has reached its limit ({name}). Do not call any more tools. "
    "Give your final answer now, based on what you have so far."
)
MALFORMED_NOTE = (
    "[agentkit] Your last reply contained a tool call that could not be parsed ({reason}); that call was "
    "not run. Write it again using exactly the DSML format described in the system prompt."
)
OUTPUT_NOTE = (
    "[agentkit] Your final answer did not match the required output schema:\n{error}\n"
    "Reply again with only a JSON value that matches this schema:\n{schema}"
)
REPEAT_NOTE = (
    "\n\n[agentkit] This exact call has now failed {count} times with the same arguments. Do not repeat "
    "it unchanged: fix the arguments or try a different approach."
)
BUDGET_NOTE = (
    "Tool `{name}` has failed {count} times in this run, which exhausts its retry budget; it was not run. "
    "Continue without it."
)
COMPACT_NOTE = (
    "[agentkit] {count} earlier assistant turns and their tool results were removed to keep the "
    "conversation within its context budget."
)
_JSON_FENCE = re.compile(r"^```[a-zA-Z]*\n(.*)\n```$", re.S)


def extract_json(text: str) -> str:
    """The JSON part of a final answer: models like to wrap it in a fenced code block."""
    stripped = text.strip()
    match = _JSON_FENCE.match(stripped)
    return match.group(1) if match else stripped


@dataclass(slots=True)
class Turn:
    raw: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    content: list[str] = field(default_factory=list)
    calls: list[ToolCall] = field(default_factory=list)
    finish: Finish | None = None
    parse_error: str | None = None


class Dispatcher:
    """Starts calls as they close; runs them concurrently except around `sequential` tools."""

    def __init__(self, loop: Loop, tg: anyio.abc.TaskGroup, step: int, enabled: bool) -> None:
        self.loop = loop
        self.tg = tg
        self.step = step
        self.enabled = enabled
        self._done: list[anyio.Event] = []
        self._last_sequential: anyio.Event | None = None
        self.active = 0

    def submit(self, index: int, call: ToolCall) -> None:
        st = self.loop.state
        st.block.append(call)
        if not self.enabled:
            return
        agent = self.loop.agent
        tool = agent.tools.get(call.name)
        limit = agent.limits.max_tool_calls
        if limit is not None and self.loop.run_usage("tool_calls") >= limit:
            self.loop.store(index, call, "Not run: the run's tool-call limit was reached.", True, "limit")
            return
        if tool is not None and tool.requires_approval and agent.approver is None:
            st.pending.append(index)
            self.loop.emit_soon(ev.ApprovalRequired(self.step, call))
            return
        st.usage.tool_calls += 1
        done = anyio.Event()
        waits = list(self._done) if tool is not None and tool.sequential else []
        if self._last_sequential is not None:
            waits.append(self._last_sequential)
        self._done.append(done)
        if tool is not None and tool.sequential:
            self._last_sequential = done
        self.active += 1
        self.tg.start_soon(self._run, index, call, waits, done)

    async def _run(self, index: int, call: ToolCall, waits: list[anyio.Event], done: anyio.Event) -> None:
        try:
            for w in waits:
                await w.wait()
            await self.loop.execute(index, call, self.step)
        finally:
            self.active -= 1
            done.set()
            self.loop._wake.set()


class Loop:
    def __init__(self, agent: Agent[Any, Any], state: RunState, emit: Emit, ctx: RunContext[Any]) -> None:
        self.agent = agent
        self.state = state
        self.ctx = ctx
        self._emit = emit
        self.mode, self.effort = encoder_mode(agent.thinking)
        self._t0 = time.monotonic()
        self._elapsed0 = state.elapsed_s
        self._queue: list[ev.Event] = []
        self._wake = anyio.Event()

    # -- small helpers ----------------------------------------------------------------------------

    async def emit(self, event: ev.Event) -> None:
        await self._emit(event)

    def emit_soon(self, event: ev.Event) -> None:
        """For sync callers (the dispatcher); flushed by the next awaited emit in the stream loop."""
        self._queue.append(event)
        self._wake.set()

    async def flush(self) -> None:
        while self._queue:
            await self._emit(self._queue.pop(0))

    def run_usage(self, name: str) -> int:
        base = self.state.baseline.get(name, 0)
        return int(getattr(self.state.usage, name)) - int(base)

    def usage_this_run(self) -> Usage:
        u = self.state.usage.copy()
        for name, base in self.state.baseline.items():
            if name != "step":
                setattr(u, name, type(getattr(u, name))(getattr(u, name) - base))
        return u

    def elapsed(self) -> float:
        return self._elapsed0 + (time.monotonic() - self._t0)

    def store(self, index: int, call: ToolCall, content: str, is_error: bool, kind: str | None) -> None:
        self.state.block_results[index] = BlockResult(content, is_error, kind)
        self.emit_soon(ev.ToolResult(self.state.step, index, call.id, call.name, content, is_error, kind))

    # -- tools ------------------------------------------------------------------------------------

    async def execute(self, index: int, call: ToolCall, step: int) -> None:
        """Run one call to a result; every failure becomes a result the model can read."""
        st = self.state
        agent = self.agent
        tool = agent.tools.get(call.name)
        kind: str | None
        if tool is None:
            from agentkit.tools.tool import ToolOutcome

            out = ToolOutcome.unknown_tool(call.name, agent.tools)
            content, is_error, kind = out.content, True, out.error_kind
        elif st.tool_failures.get(call.name, 0) >= tool.retries + agent.limits.max_tool_failures:
            count = st.tool_failures[call.name]
            content, is_error, kind = BUDGET_NOTE.format(name=call.name, count=count), True, "retry_budget"
        else:
            if tool.requires_approval and agent.approver is not None:
                decision = agent.approver(call)
                if inspect.isawaitable(decision):
                    decision = await decision
                if decision is not True:
                    from agentkit.tools.tool import ToolOutcome

                    reason = decision if isinstance(decision, str) else ""
                    denied = ToolOutcome.denied(call.name, reason)
                    self._finish_call(index, call, denied.content, True, "denied")
                    return
            if call.raw_arguments is not None:
                content = (
                    f"Arguments for `{call.name}` must be a JSON object of named parameters; "
                    f"got: {call.raw_arguments[:200]}"
                )
                is_error, kind = True, "validation"
            else:
                outcome = await tool.invoke(call.arguments, self.ctx, tool_call_id=call.id)
                content, is_error, kind = outcome.content, outcome.is_error, outcome.error_kind
        self._finish_call(index, call, content, is_error, kind)

    def _finish_call(
        self, index: int, call: ToolCall, content: str, is_error: bool, kind: str | None
    ) -> None:
        st = self.state
        if is_error and kind not in ("denied", "cancelled"):
            st.tool_failures[call.name] = st.tool_failures.get(call.name, 0) + 1
            sig = call.signature()
            count = st.failing_calls.get(sig, 0) + 1
            st.failing_calls[sig] = count
            if count >= self.agent.limits.identical_failure_threshold:
                content += REPEAT_NOTE.format(count=count)
        elif not is_error:
            st.tool_failures.pop(call.name, None)
        self.store(index, call, content, is_error, kind)

    # -- transcript -------------------------------------------------------------------------------

    def append_user_turn(self) -> bool:
        """Close the current block (results in call order) and any note into one user turn."""
        st = self.state
        results: list[str] = []
        for i, call in enumerate(st.block):
            r = st.block_results.get(i) or BlockResult("Not run.", True, "not_run")
            st.messages.append(ToolMessage(call.id, call.name, r.content, r.is_error))
            results.append(r.content)
        note = st.note
        if not results and note is None:
            return False
        if note is not None:
            st.messages.append(UserMessage(note))
        prefix = dsml_encode.render_assistant_prefix(self.mode)
        if results:
            # Tool output goes in as separate untrusted segments (plain text to a tokenizer); the
            # pieces must add up to the codec's own rendering of the turn, byte for byte.
            pieces: list[tuple[str, bool]] = [(USER, True)]
            for i, content in enumerate(results):
                opening = ("\n\n" if i else "") + TOOL_RESULT_OPEN
                pieces += [(opening, True), (content, False), (TOOL_RESULT_CLOSE, True)]
            pieces.append(((("\n\n" + note) if note is not None else "") + prefix, True))
            expected = dsml_encode.render_tool_results(results)
            if "".join(p for p, _ in pieces[:-1]) != expected:
                raise RuntimeError("tool-result rendering drifted from the DSML codec")
            merged: list[tuple[str, bool]] = []
            for text, trusted in pieces:
                if merged and merged[-1][1] and trusted:
                    merged[-1] = (merged[-1][0] + text, True)
                else:
                    merged.append((text, trusted))
            for text, trusted in merged:
                st.transcript.append(text, trusted=trusted)
        else:
            st.transcript.append(dsml_encode.render_user_turn(note or "") + prefix)
        st.block = []
        st.block_results = {}
        st.pending = []
        st.note = None
        return True

    def render_all(self, messages: list[Message]) -> str:
        return dsml_encode.encode_messages(
            [message_to_dict(m) for m in messages],
            self.mode,
            drop_thinking=False,
            reasoning_effort=self.effort,
        )

    async def maybe_compact(self) -> None:
        """Drop whole old turns (never a call without its result) when the context nears its budget."""
        st = self.state
        limits = self.agent.limits
        budget = limits.context_budget_tokens
        if budget is None or st.usage.context_tokens <= budget * limits.compact_at:
            return
        msgs = st.messages
        first_user = next((i for i, m in enumerate(msgs) if isinstance(m, UserMessage)), None)
        if first_user is None:
            return
        starts = [i for i in range(first_user + 1, len(msgs)) if isinstance(msgs[i], AssistantMessage)]
        if len(starts) < 2:
            return
        per_char = st.usage.context_tokens / max(st.transcript.n_chars, 1)

        def size(m: Message) -> int:
            if isinstance(m, AssistantMessage):
                n = len(m.content) + len(m.reasoning_content or "")
                return n + sum(len(c.arguments_json()) + len(c.name) + 80 for c in m.tool_calls)
            return len(m.content) + 40

        total = st.usage.context_tokens
        target = budget * limits.compact_to
        drop = 0
        while drop < len(starts) - 1 and total > target:
            end = starts[drop + 1]
            total -= int(sum(size(m) for m in msgs[starts[drop] : end]) * per_char)
            drop += 1
        if drop == 0:
            return
        cut_end = starts[drop]
        kept = [*msgs[: first_user + 1], UserMessage(COMPACT_NOTE.format(count=drop)), *msgs[cut_end:]]
        st.messages = kept
        tr = Transcript(st.transcript.epoch + 1)
        tr.append(self.render_all(kept))
        st.transcript = tr
        st.usage.context_tokens = int(tr.n_chars * per_char)
        await self.emit(
            ev.ErrorEvent(st.step, "compacted", f"dropped {drop} old turns to fit the context budget")
        )

    # -- one generation ---------------------------------------------------------------------------

    async def generate(self, allow_tools: bool) -> Turn:
        st = self.state
        agent = self.agent
        request = ModelRequest(
            st.transcript,
            st.messages,
            agent.tool_schemas if allow_tools else [],
            agent.thinking,
            st.run_id,
            max_tokens=agent.limits.max_tokens_per_step,
            allow_tools=allow_tools,
        )
        turn = Turn()
        step = st.step
        try:
            await self._generate(request, turn, step)
        except BaseExceptionGroup as group:
            # A task group wraps even a single failure; callers should see the ModelError itself.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        await self.flush()
        return turn

    async def _generate(self, request: ModelRequest, turn: Turn, step: int) -> None:
        agent = self.agent
        text_parser: Any = None
        content_parser: Any = None
        chat_calls: dict[int, list[Any]] = {}  # index -> [id, name, [arg parts], started]
        async with anyio.create_task_group() as tg:
            disp = Dispatcher(self, tg, step, request.allow_tools)

            async def on_parse(events: list[Any], offset: int) -> None:
                for e in events:
                    if isinstance(e, dsml_types.ReasoningDelta):
                        turn.reasoning.append(e.text)
                        await self.emit(ev.ReasoningDelta(step, e.text))
                    elif isinstance(e, dsml_types.ContentDelta):
                        turn.content.append(e.text)
                        await self.emit(ev.TextDelta(step, e.text))
                    elif isinstance(e, dsml_types.ToolCallStart):
                        idx = offset + e.index
                        await self.emit(ev.ToolCallStart(step, idx, f"call_{step}_{idx}", e.name))
                    elif isinstance(e, dsml_types.ParameterDelta):
                        await self.emit(ev.ToolCallArgDelta(step, offset + e.index, e.name, e.text))
                    elif isinstance(e, dsml_types.ToolCallEnd):
                        idx = offset + e.index
                        call = ToolCall(f"call_{step}_{idx}", e.call.name, dict(e.call.arguments))
                        await self.close_call(turn, disp, idx, call)
                    elif isinstance(e, dsml_types.ToolCallTorn):
                        turn.parse_error = f"the output ended inside the call to {e.torn.name!r}"
                        await self.emit(ev.ErrorEvent(step, "torn_call", turn.parse_error))
                    elif isinstance(e, dsml_types.ParseWarning):
                        await self.emit(ev.ErrorEvent(step, "parse_warning", e.message))
                    elif isinstance(e, dsml_types.ParseError):
                        turn.parse_error = e.reason
                        await self.emit(ev.ErrorEvent(step, "parse_error", e.reason))

            async def close_chat_call(index: int) -> None:
                cid, name, parts, _ = chat_calls.pop(index)
                raw = "".join(parts) or "{}"
                try:
                    args = json.loads(raw)
                except json.JSONDecodeError:
                    args = None
                call = ToolCall(
                    cid or f"call_{step}_{index}",
                    name or "",
                    args if isinstance(args, dict) else {},
                    None if isinstance(args, dict) else raw,
                )
                await self.close_call(turn, disp, len(turn.calls), call)

            async for chunk in agent.model.stream(request):
                if isinstance(chunk, RawText):
                    if text_parser is None:
                        text_parser = agent.stream_parser(self.mode)
                    turn.raw.append(chunk.text)
                    if chunk.token_ids:
                        turn.token_ids.extend(chunk.token_ids)
                    await on_parse(text_parser.feed(chunk.text), 0)
                elif isinstance(chunk, ReasoningChunk):
                    turn.reasoning.append(chunk.text)
                    await self.emit(ev.ReasoningDelta(step, chunk.text))
                elif isinstance(chunk, ContentChunk):
                    if content_parser is None:
                        content_parser = agent.stream_parser("chat")
                    await on_parse(content_parser.feed(chunk.text), len(turn.calls))
                elif isinstance(chunk, ToolCallChunk):
                    for other in [i for i in chat_calls if i < chunk.index]:
                        await close_chat_call(other)
                    slot = chat_calls.setdefault(chunk.index, [None, None, [], False])
                    slot[0] = slot[0] or chunk.id
                    slot[1] = slot[1] or chunk.name
                    if not slot[3] and slot[1]:
                        slot[3] = True
                        cid = slot[0] or f"call_{step}_{len(turn.calls)}"
                        await self.emit(ev.ToolCallStart(step, len(turn.calls), cid, slot[1]))
                    if chunk.arguments:
                        slot[2].append(chunk.arguments)
                        await self.emit(ev.ToolCallArgDelta(step, len(turn.calls), None, chunk.arguments))
                elif isinstance(chunk, Finish):
                    turn.finish = chunk
                await self.flush()
            if text_parser is not None:
                await on_parse(text_parser.close(), 0)
            if content_parser is not None:
                await on_parse(content_parser.close(), len(turn.calls))
            for index in sorted(chat_calls):
                await close_chat_call(index)
            if turn.finish is None:
                raise ModelError(f"model {agent.model.name!r} ended its stream without a Finish")
            if not turn.calls and any("DSML" in r for r in turn.reasoning):
                await self.heal_from_reasoning(turn, disp)
            while disp.active:  # hand out each tool's result as it lands, not all at the end
                await self._wake.wait()
                self._wake = anyio.Event()
                await self.flush()

    async def close_call(self, turn: Turn, disp: Dispatcher, index: int, call: ToolCall) -> None:
        turn.calls.append(call)
        await self.emit(ev.ToolCallEnd(self.state.step, index, call))
        disp.submit(index, call)
        await self.flush()

    async def heal_from_reasoning(self, turn: Turn, disp: Dispatcher) -> None:
        """A model sometimes writes its tool block before `</think>`: recover the calls from there."""
        reasoning = "".join(turn.reasoning)
        parser = self.agent.stream_parser("chat")
        start = reasoning.find("<")
        while start != -1 and "DSML" not in reasoning[start : start + 12]:
            start = reasoning.find("<", start + 1)
        if start == -1:
            return
        events = [*parser.feed("\n\n" + reasoning[start:]), *parser.close()]
        for e in events:
            if isinstance(e, dsml_types.ToolCallEnd):
                idx = len(turn.calls)
                await self.close_call(
                    turn,
                    disp,
                    idx,
                    ToolCall(f"call_{self.state.step}_{idx}", e.call.name, dict(e.call.arguments)),
                )
        if turn.calls:
            turn.reasoning = [reasoning[:start].rstrip()]

    # -- the loop ---------------------------------------------------------------------------------

    def record_turn(self, turn: Turn) -> AssistantMessage:
        st = self.state
        reasoning = "".join(turn.reasoning) if self.mode == "thinking" else None
        msg = AssistantMessage("".join(turn.content), reasoning, list(turn.calls))
        st.messages.append(msg)
        if self.agent.model.protocol == "text":
            generated = "".join(turn.raw)
            st.transcript.append(generated, generated=True, token_ids=turn.token_ids or None)
            if not generated.endswith(EOS):
                # Servers strip the stop token from the text; the canonical turn ends with it.
                st.transcript.append(EOS)
        else:
            st.transcript.append(dsml_encode.render_assistant_turn(message_to_dict(msg), self.mode))
        f = turn.finish
        assert f is not None
        u = st.usage
        u.requests += 1
        u.prompt_tokens += f.prompt_tokens
        u.cached_prompt_tokens += f.cached_tokens
        u.prefilled_tokens += f.prefilled_tokens
        u.completion_tokens += f.completion_tokens
        u.context_tokens = f.prompt_tokens + f.completion_tokens
        pricing = self.agent.model.pricing
        if pricing is not None:
            u.cost_usd += pricing.cost(f.prompt_tokens, f.cached_tokens, f.completion_tokens)
        return msg

    def add_note(self, text: str) -> None:
        st = self.state
        st.note = text if st.note is None else st.note + "\n\n" + text

    async def resolve_pending(self, approvals: dict[str, bool | str]) -> None:
        """Apply approve/deny decisions to the paused block, running the approved calls together."""
        from agentkit.tools.tool import ToolOutcome

        st = self.state
        step = st.step
        async with anyio.create_task_group() as tg:
            for index in list(st.pending):
                call = st.block[index]
                decision = approvals[call.id]
                if decision is True:
                    st.usage.tool_calls += 1
                    tg.start_soon(self.execute, index, call, step)
                else:
                    reason = decision if isinstance(decision, str) else ""
                    out = ToolOutcome.denied(call.name, reason)
                    self._finish_call(index, call, out.content, True, "denied")
        st.pending = []
        await self.flush()

    async def run(self) -> None:
        st = self.state
        agent = self.agent
        limits = agent.limits
        base_step = int(st.baseline.get("step", 0))
        while True:
            if st.final_requested is None:
                tripped = limits.tripped(self.usage_this_run(), st.step - base_step, self.elapsed())
                if tripped is not None:
                    st.final_requested = tripped
                    await self.emit(
                        ev.ErrorEvent(st.step, "limit", f"{tripped} reached; asking for a final answer")
                    )
                    if st.block or st.note is not None or st.step > 0:
                        self.add_note(LIMIT_NOTE.format(name=tripped))
            self.append_user_turn()
            await self.maybe_compact()
            st.step += 1
            await self.emit(ev.StepStart(st.step))
            turn = await self.generate(allow_tools=st.final_requested is None)
            msg = self.record_turn(turn)
            st.elapsed_s = self.elapsed()
            assert turn.finish is not None
            await self.emit(ev.UsageUpdate(st.step, st.usage.copy()))
            await self.emit(ev.StepEnd(st.step, turn.finish.reason))
            if st.final_requested is not None:
                st.block, st.block_results, st.pending = [], {}, []
                st.status, st.output = f"limit:{st.final_requested}", msg.content
                return
            if st.pending:
                st.status = "paused"
                return
            if turn.calls:
                if turn.parse_error is not None:  # e.g. a second call cut off after a good first one
                    self.add_note(MALFORMED_NOTE.format(reason=turn.parse_error))
                continue
            if turn.finish.reason == "length":
                # The turn was cut by the per-step token budget: not an answer, and saying so beats
                # returning half a sentence as if the model had finished.
                st.status, st.output = "truncated", msg.content
                await self.emit(
                    ev.ErrorEvent(st.step, "truncated", "the model's turn hit max_tokens_per_step")
                )
                return
            if turn.parse_error is not None and st.output_retries_used < limits.output_retries:
                st.output_retries_used += 1
                self.add_note(MALFORMED_NOTE.format(reason=turn.parse_error))
                continue
            if agent.output_adapter is not None:
                error = agent.validate_output(msg.content)
                if error is not None:
                    await self.emit(ev.ErrorEvent(st.step, "output_validation", error))
                    if st.output_retries_used < limits.output_retries:
                        st.output_retries_used += 1
                        schema = json.dumps(agent.output_schema, ensure_ascii=False)
                        self.add_note(OUTPUT_NOTE.format(error=error, schema=schema))
                        continue
                    st.status, st.output = "output_invalid", msg.content
                    return
            st.status, st.output = "completed", msg.content
            return
