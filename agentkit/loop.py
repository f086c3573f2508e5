"""The agent loop: generate -> parse -> dispatch tools -> append results, until an answer or a limit.

One `Loop` drives one `RunState`. Its central promise is the append-only transcript: a step appends
the model's output verbatim, then one user turn of `<tool_result>` blocks in call order (plus any note
from the framework) and the assistant prefix, all rendered by the DSML codec's suffix helpers. So after
N steps the transcript equals `encode_messages` of the message list whenever the model's output was
canonical DSML, and nothing is ever re-rendered except by an explicit context compaction.

The parts around it live apart: turning a backend's chunks into a turn (`backends.assembly`), running
tool calls to results (`dispatch`), compaction (`compaction`), structured output (`output`). Tool calls
start the moment the assembler closes them, while the model is still writing; they run in a task group
inside the step, so cancelling the run cancels every tool in flight.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from agentkit import events as ev
from agentkit.backends.assembly import Turn, TurnAssembler
from agentkit.backends.base import Model, ModelError, ModelRequest, ThinkingMode, encoder_mode
from agentkit.compaction import compact
from agentkit.dispatch import Approver, Dispatcher, ToolRunner
from agentkit.dsml import encode as dsml_encode
from agentkit.dsml.tokens import EOS, TOOL_RESULT_CLOSE, TOOL_RESULT_OPEN, USER
from agentkit.limits import Limits, Usage
from agentkit.messages import AssistantMessage, Message, ToolMessage, UserMessage, message_to_dict
from agentkit.output import OutputSpec
from agentkit.session import BlockResult, ModelRecord, RunState, StepRecord
from agentkit.tracing import for_run

if TYPE_CHECKING:
    from agentkit.tools.context import RunContext
    from agentkit.tools.tool import Tool

Emit = Callable[[ev.Event], Awaitable[None]]

LIMIT_NOTE = (
    "[agentkit] The run has reached its limit ({name}). Do not call any more tools. "
    "Give your final answer now, based on what you have so far."
)
MALFORMED_NOTE = (
    "[agentkit] Your last reply contained a tool call that could not be parsed ({reason}); that call was "
    "not run. Write it again using exactly the DSML format described in the system prompt."
)
RESUMED_NOTE = (
    "[agentkit] The run was interrupted and resumed. Before the interruption these tool calls had "
    "already run or started, and their effects may remain: {calls}."
)
EMPTY_NOTE = (
    "[agentkit] Your last reply was empty. Give your final answer, or call a tool if you still need one."
)
OUTPUT_NOTE = (
    "[agentkit] Your final answer did not match the required output schema:\n{error}\n"
    "Reply again with only a JSON value that matches this schema:\n{schema}"
)

__all__ = ["LIMIT_NOTE", "MALFORMED_NOTE", "OUTPUT_NOTE", "Approver", "Emit", "Loop", "RunSpec"]


class RunSpec(Protocol):
    """What a run needs from its agent: configuration only (an `Agent` is one)."""

    model: Model
    tools: dict[str, Tool]
    tool_schemas: list[dict[str, Any]]
    thinking: ThinkingMode
    limits: Limits
    approver: Approver | None
    output: OutputSpec | None


class Loop:
    def __init__(self, spec: RunSpec, state: RunState, emit: Emit, ctx: RunContext[Any]) -> None:
        self.spec = spec
        self.state = state
        self._emit = emit
        self.mode, self.effort = encoder_mode(spec.thinking)
        self._t0 = time.monotonic()
        self._elapsed0 = state.elapsed_s
        self._queue: list[ev.Event] = []
        self._wake = anyio.Event()
        self.tools = ToolRunner(state, spec.tools, spec.limits, spec.approver, ctx, self.emit_soon)
        # durable runs: called at every point the run could resume from (True: the backend's KV state
        # may be saved with it); the agent sets it when it has a store
        self.checkpoint: Callable[[bool], None] = lambda with_kv: None
        self.tools.on_result = lambda: self.checkpoint(False)
        self.trace = for_run(spec, state)  # OpenTelemetry spans, or a no-op when no provider is set
        self.tools.trace = self.trace

    # -- the loop ---------------------------------------------------------------------------------

    async def run(self, *, at_step: bool = False) -> None:
        """Steps until the run ends: each sends what is pending, lets the model answer, then decides.

        `at_step`: the pending turn was already sent (a run resumed at a "ready" checkpoint).
        """
        st = self.state
        while True:
            if not at_step:
                await self.check_limits()
                self.append_user_turn()
                await self.maybe_compact()
                st.phase = "ready"
                self.checkpoint(False)
            at_step = False
            turn, msg = await self.step()
            if not await self.decide(turn, msg):
                return
            st.phase = "decided"
            self.checkpoint(True)

    async def check_limits(self) -> None:
        """Once a limit trips, the next step asks for a final answer without tools."""
        st = self.state
        if st.final_requested is not None:
            return
        base_step = int(st.baseline.get("step", 0))
        tripped = self.spec.limits.tripped(self.usage_this_run(), st.step - base_step, self.elapsed())
        if tripped is None:
            return
        st.final_requested = tripped
        await self.emit(ev.ErrorEvent(st.step, "limit", f"{tripped} reached; asking for a final answer"))
        if st.block or st.note is not None or st.step > 0:
            self.add_note(LIMIT_NOTE.format(name=tripped))

    async def step(self) -> tuple[Turn, AssistantMessage]:
        """One model call with its tools: events out, the turn recorded in the transcript."""
        st = self.state
        st.step += 1
        st.steps.append(StepRecord(st.step, time.time()))
        st.phase = "generating"
        await self.emit(ev.StepStart(st.step))
        with self.trace.step(st.step):
            t0 = time.monotonic()
            turn = await self.generate(allow_tools=st.final_requested is None)
            return turn, await self.end_step(turn, time.monotonic() - t0)

    async def end_step(self, turn: Turn, latency_s: float) -> AssistantMessage:
        st = self.state
        msg = self.record_turn(turn, latency_s)
        st.partial = None
        st.elapsed_s = self.elapsed()
        assert turn.finish is not None
        await self.emit(ev.UsageUpdate(st.step, st.usage.copy()))
        await self.emit(ev.StepEnd(st.step, turn.finish.reason))
        return msg

    async def decide(self, turn: Turn, msg: AssistantMessage) -> bool:
        """After a step: True to go on, or False with the run's final status set on the state.

        The one place the run's outcome is decided. A turn the run cannot take as written (a refused
        call, a block with no call, a torn call: `Turn.malformed`) is never accepted silently: the model
        is told what was wrong (refused calls through their results, the rest through a note) and may
        try again `Limits.malformed_retries` turns in a row before the run ends as "malformed". An empty
        final answer is never "completed".
        """
        st = self.state
        limits = self.spec.limits
        assert turn.finish is not None
        st.malformed_streak = st.malformed_streak + 1 if turn.malformed else 0
        out_of_retries = st.malformed_streak > limits.malformed_retries
        if turn.malformed and (turn.lost or turn.parse_error):
            self.add_note(
                MALFORMED_NOTE.format(
                    reason="; ".join([*turn.lost, *([turn.parse_error] if turn.parse_error else [])])
                )
            )
        if st.final_requested is not None:
            st.block, st.block_results, st.pending = [], {}, []
            st.status, st.output = f"limit:{st.final_requested}", msg.content
        elif st.pending:
            st.status = "paused"
        elif turn.malformed and out_of_retries:
            st.block, st.block_results, st.note = [], {}, None
            st.status, st.output = "malformed", msg.content
            why = f"{st.malformed_streak} malformed turns in a row; the run stops"
            await self.emit(ev.ErrorEvent(st.step, "malformed", why))
        elif turn.calls or turn.malformed:
            return True
        elif turn.finish.reason == "length":
            # Cut by the per-step token budget: not an answer, and saying so beats returning half a
            # sentence as if the model had finished.
            st.status, st.output = "truncated", msg.content
            await self.emit(ev.ErrorEvent(st.step, "truncated", "the model's turn hit max_tokens_per_step"))
        elif not msg.content.strip():
            await self.emit(ev.ErrorEvent(st.step, "empty_answer", "the model's final answer is empty"))
            if st.empty_answers < limits.empty_retries:
                st.empty_answers += 1
                self.add_note(EMPTY_NOTE)
                return True
            st.status, st.output = "empty", msg.content
        elif self.spec.output is not None and (error := self.spec.output.validate(msg.content)) is not None:
            await self.emit(ev.ErrorEvent(st.step, "output_validation", error))
            if st.output_retries_used < limits.output_retries:
                st.output_retries_used += 1
                schema = json.dumps(self.spec.output.schema, ensure_ascii=False)
                self.add_note(OUTPUT_NOTE.format(error=error, schema=schema))
                return True
            st.status, st.output = "output_invalid", msg.content
        else:
            st.status, st.output = "completed", msg.content
        return False

    # -- one generation ---------------------------------------------------------------------------

    async def generate(self, allow_tools: bool) -> Turn:
        st = self.state
        spec = self.spec
        request = ModelRequest(
            st.transcript,
            st.messages,
            spec.tool_schemas if allow_tools else [],
            spec.thinking,
            st.run_id,
            max_tokens=spec.limits.max_tokens_per_step,
            allow_tools=allow_tools,
        )
        try:
            async with anyio.create_task_group() as tg:
                disp = Dispatcher(self.tools, tg, allow_tools, self._wake.set)
                asm = TurnAssembler(st.step, self.mode, self.emit, disp.submit, disp.refuse)
                with self.trace.model_call(request) as span:
                    async for chunk in spec.model.stream(request):
                        await asm.feed(chunk)
                        await self.flush()
                    turn = await asm.close()
                    span.finish(turn)
                await self.flush()
                if turn.finish is None:
                    raise ModelError(f"model {spec.model.name!r} ended its stream without a Finish")
                st.phase, st.partial = "streamed", turn.to_dict()
                self.checkpoint(False)  # from here a crash costs no model call, only the tools in flight
                while disp.active:  # hand out each tool's result as it lands, not all at the end
                    await self._wake.wait()
                    self._wake = anyio.Event()
                    await self.flush()
            leftover = [*self.tools.carried, *self.tools.in_flight]
            if leftover:  # a resumed call that did not write again what the lost attempt had started
                names = ", ".join(sorted({k.split(":", 1)[1].split("\x00")[0] for k in leftover}))
                self.add_note(RESUMED_NOTE.format(calls=names))
                self.tools.carried.clear()
                self.tools.in_flight.clear()
        except BaseExceptionGroup as group:
            # A task group wraps even a single failure; callers should see the ModelError itself.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        await self.flush()
        return turn

    def record_turn(self, turn: Turn, latency_s: float) -> AssistantMessage:
        """The model's turn into the message list and (verbatim, for text backends) the transcript."""
        st = self.state
        reasoning = "".join(turn.reasoning) if self.mode == "thinking" else None
        msg = AssistantMessage("".join(turn.content), reasoning, list(turn.calls))
        st.messages.append(msg)
        if self.spec.model.protocol == "text":
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
        u.decode_steps += f.decode_steps
        u.drafted_tokens += f.drafted_tokens
        u.accepted_tokens += f.accepted_tokens
        u.lookup_drafted_tokens += f.lookup_drafted_tokens
        u.lookup_accepted_tokens += f.lookup_accepted_tokens
        u.context_tokens = f.prompt_tokens + f.completion_tokens
        pricing = self.spec.model.pricing
        if pricing is not None:
            u.cost_usd += pricing.cost(f.prompt_tokens, f.cached_tokens, f.completion_tokens)
        st.steps[-1].model = ModelRecord(
            f.prompt_tokens, f.cached_tokens, f.prefilled_tokens, f.completion_tokens,
            turn.first_chunk_s, latency_s, f.reason,
        )  # fmt: skip
        return msg

    # -- the transcript between steps -------------------------------------------------------------

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
        dropped = compact(self.state, self.spec.limits, self.render_all)
        if dropped:
            await self.emit(
                ev.ErrorEvent(
                    self.state.step, "compacted", f"dropped {dropped} old turns to fit the context budget"
                )
            )

    def add_note(self, text: str) -> None:
        st = self.state
        st.note = text if st.note is None else st.note + "\n\n" + text

    async def resolve_pending(self, approvals: dict[str, bool | str]) -> None:
        """Apply approve/deny decisions to the paused block, running the approved calls together."""
        await self.tools.resolve_pending(approvals)
        await self.flush()

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

    def usage_this_run(self) -> Usage:
        u = self.state.usage.copy()
        for name, base in self.state.baseline.items():
            if name != "step":
                setattr(u, name, type(getattr(u, name))(getattr(u, name) - base))
        return u

    def elapsed(self) -> float:
        return self._elapsed0 + (time.monotonic() - self._t0)
