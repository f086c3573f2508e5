"""Tool calls from the moment they close to their results: eager start, ordering, approvals, failures.

`Dispatcher` starts each call as soon as the stream assembler closes it, while the model is still
writing the rest of the block; calls run concurrently in the step's task group, except around tools
marked `sequential`. `ToolRunner` turns one call into a result the model can read, whatever happens:
an unknown tool, a tool past its retry budget, a denial, bad arguments, an exception or a timeout all
become results, and failures are counted per tool and per identical call so the model is told when it
keeps repeating one. Nothing here knows how the model streams or how results enter the transcript.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from agentkit import events as ev
from agentkit.limits import Limits
from agentkit.messages import ToolCall
from agentkit.session import BlockResult, RunState, ToolRecord
from agentkit.tracing import NO_TRACE

if TYPE_CHECKING:
    from agentkit.tools.context import RunContext
    from agentkit.tools.tool import Tool

Approver = Callable[[ToolCall], "bool | str | Awaitable[bool | str]"]

# Where a sub-agent tool (agentkit.subagent) finds the `ToolRunner` of the run that called it.
CALLER_KEY = "agentkit.caller"

REPEAT_NOTE = (
    "\n\n[agentkit] This exact call has now failed {count} times with the same arguments. Do not repeat "
    "it unchanged: fix the arguments or try a different approach."
)
INTERRUPTED_NOTE = (
    "[agentkit] This call was interrupted: the run stopped while it ran (its process ended) and has "
    "been resumed since. It may or may not have taken effect; check before running it again."
)
REFUSED_NOTE = (
    "[agentkit] This call was not run: {reason}. Nothing was executed; write the call again, correctly, "
    "if you still need it."
)
BUDGET_NOTE = (
    "Tool `{name}` has failed {count} times in this run, which exhausts its retry budget; it was not run. "
    "Continue without it."
)


class ToolRunner:
    """Runs calls of one run to results, records them in the run state and reports them as events."""

    trace: Any = NO_TRACE  # the loop's `agentkit.tracing` run trace: one span per call

    def __init__(
        self,
        state: RunState,
        tools: dict[str, Tool],
        limits: Limits,
        approver: Approver | None,
        ctx: RunContext[Any],
        emit_soon: Callable[[ev.Event], None],
    ) -> None:
        self.state = state
        self.tools = tools
        self.limits = limits
        self.approver = approver
        self.ctx = ctx
        self.emit_soon = emit_soon
        self.on_result: Callable[[], None] = lambda: None  # a durable run checkpoints here
        # after a crash during a model call (agentkit.recovery): results of the calls that attempt had
        # finished, and the calls it had started, by "index:signature"
        self.carried: dict[str, BlockResult] = {}
        self.in_flight: set[str] = set()
        # sub-agent calls (agentkit.subagent), by call id: a child that paused on approvals hands its
        # state back in `suspended`; a resumed one finds its state and decisions in `resuming`
        self.suspended: dict[str, RunState] = {}
        self.resuming: dict[str, tuple[RunState, dict[str, bool | str]]] = {}
        ctx.extra[CALLER_KEY] = self

    def calls_this_run(self) -> int:
        return self.state.usage.tool_calls - int(self.state.baseline.get("tool_calls", 0))

    async def execute(self, index: int, call: ToolCall) -> None:
        """Run one call to a result; every failure becomes a result the model can read."""
        from agentkit.tools.tool import ToolOutcome

        st = self.state
        tool = self.tools.get(call.name)
        t0 = time.monotonic()
        kind: str | None
        if tool is None:
            out = ToolOutcome.unknown_tool(call.name, self.tools)
            content, is_error, kind = out.content, True, out.error_kind
        elif st.tool_failures.get(call.name, 0) >= tool.retries + self.limits.max_tool_failures:
            count = st.tool_failures[call.name]
            content, is_error, kind = BUDGET_NOTE.format(name=call.name, count=count), True, "retry_budget"
        else:
            if tool.requires_approval and self.approver is not None:
                decision = self.approver(call)
                if inspect.isawaitable(decision):
                    decision = await decision
                if decision is not True:
                    self.deny(index, call, decision)
                    return
            if call.raw_arguments is not None:
                content = (
                    f"Arguments for `{call.name}` must be a JSON object of named parameters; "
                    f"got: {call.raw_arguments[:200]}"
                )
                is_error, kind = True, "validation"
            else:
                outcome = await tool.invoke(call.arguments, self.ctx, tool_call_id=call.id)
                if self.suspend(index, call):
                    return
                content, is_error, kind = outcome.content, outcome.is_error, outcome.error_kind
        self.finish(index, call, content, is_error, kind, time.monotonic() - t0)

    def suspend(self, index: int, call: ToolCall) -> bool:
        """True if `call` started a sub-agent that paused on approvals: the call then waits as pending,
        holding the child's state, and the child's calls are announced under "<call id>/<child call id>"."""
        child = self.suspended.pop(call.id, None)
        if child is None:
            return False
        st = self.state
        st.children[index] = child
        st.pending.append(index)
        for c in child.pending_calls:
            nested = ToolCall(f"{call.id}/{c.id}", c.name, dict(c.arguments), c.raw_arguments)
            self.emit_soon(ev.ApprovalRequired(st.step, nested))
        self.on_result()
        return True

    async def resume_child(self, index: int, call: ToolCall, approvals: dict[str, bool | str]) -> None:
        """Continue a sub-agent call whose child paused, with the decisions addressed to it."""
        from agentkit.tools.tool import ToolOutcome

        prefix = call.id + "/"
        child = self.state.children.pop(index)
        decisions = {k[len(prefix) :]: v for k, v in approvals.items() if k.startswith(prefix)}
        tool = self.tools.get(call.name)
        if tool is None:  # the resuming agent lacks the sub-agent tool the paused run used
            out = ToolOutcome.unknown_tool(call.name, self.tools)
            self.finish(index, call, out.content, True, out.error_kind)
            return
        t0 = time.monotonic()
        self.resuming[call.id] = (child, decisions)
        try:
            outcome = await tool.invoke(call.arguments, self.ctx, tool_call_id=call.id)
        finally:
            self.resuming.pop(call.id, None)
        if not self.suspend(index, call):
            duration = time.monotonic() - t0
            self.finish(index, call, outcome.content, outcome.is_error, outcome.error_kind, duration)

    async def traced(self, index: int, call: ToolCall) -> None:
        """`execute` inside its tracing span (the dispatcher's path does the same)."""
        with self.trace.tool_call(index, call):
            await self.execute(index, call)

    def deny(self, index: int, call: ToolCall, decision: bool | str) -> None:
        from agentkit.tools.tool import ToolOutcome

        denied = ToolOutcome.denied(call.name, decision if isinstance(decision, str) else "")
        self.finish(index, call, denied.content, True, "denied")

    def finish(
        self,
        index: int,
        call: ToolCall,
        content: str,
        is_error: bool,
        kind: str | None,
        duration_s: float = 0.0,
    ) -> None:
        """Count the outcome (failures per tool and per identical call), then store it."""
        st = self.state
        if is_error and kind not in ("denied", "cancelled"):
            st.tool_failures[call.name] = st.tool_failures.get(call.name, 0) + 1
            sig = call.signature()
            count = st.failing_calls.get(sig, 0) + 1
            st.failing_calls[sig] = count
            if count >= self.limits.identical_failure_threshold:
                content += REPEAT_NOTE.format(count=count)
        elif not is_error:
            st.tool_failures.pop(call.name, None)
        self.store(index, call, content, is_error, kind, duration_s)

    def store(
        self,
        index: int,
        call: ToolCall,
        content: str,
        is_error: bool,
        kind: str | None,
        duration_s: float = 0.0,
    ) -> None:
        st = self.state
        st.block_results[index] = BlockResult(content, is_error, kind)
        if st.steps:
            st.steps[-1].tools.append(
                ToolRecord(call.id, call.name, dict(call.arguments), duration_s, is_error, kind)
            )
        self.emit_soon(ev.ToolResult(st.step, index, call.id, call.name, content, is_error, kind))
        self.on_result()

    def interrupted(self, index: int, call: ToolCall) -> bool:
        """A call that was running when the process died: True if it got its result here (reported as
        interrupted), False if it may simply run again (its tool is idempotent)."""
        tool = self.tools.get(call.name)
        if tool is not None and tool.idempotent:
            return False
        self.store(index, call, INTERRUPTED_NOTE, True, "interrupted")
        return True

    def recovered(self, index: int, call: ToolCall) -> bool:
        """Recovery after a crash during a model call: True if this call (same place, same arguments)
        already has its outcome from the interrupted attempt, so it must not run again."""
        key = f"{index}:{call.signature()}"
        done = self.carried.pop(key, None)
        if done is not None:
            self.store(index, call, done.content, done.is_error, done.error_kind)
            return True
        if key in self.in_flight:
            self.in_flight.discard(key)
            return self.interrupted(index, call)
        return False

    async def resolve_pending(self, approvals: dict[str, bool | str]) -> None:
        """Apply approve/deny decisions to the paused block, running the approved calls together.

        The decisions are recorded (and checkpointed) before any approved call starts, so a crash in
        between leaves a run that knows exactly which calls were approved and may have run.
        """
        st = self.state
        approved, children = [], []
        for index in list(st.pending):
            call = st.block[index]
            if index in st.children:
                children.append(index)
                continue
            decision = approvals[call.id]
            if decision is True:
                approved.append(index)
            else:
                self.deny(index, call, decision)
        st.pending = []
        st.phase = "approving"
        self.on_result()
        async with anyio.create_task_group() as tg:
            for index in approved:
                st.usage.tool_calls += 1
                tg.start_soon(self.traced, index, st.block[index])
            for index in children:
                tg.start_soon(self.resume_child, index, st.block[index], approvals)

    async def settle(self) -> None:
        """After a crash: every call of the block without a result and not awaiting approval was running
        when the process died; run it again if idempotent, else report it interrupted."""
        st = self.state
        if st.final_requested is not None:
            return  # a final-answer step dispatches nothing
        async with anyio.create_task_group() as tg:
            for index, call in enumerate(st.block):
                if index in st.block_results or index in st.pending:
                    continue
                if not self.interrupted(index, call):
                    st.usage.tool_calls += 1
                    tg.start_soon(self.execute, index, call)


class Dispatcher:
    """Starts calls as they close; runs them concurrently except around `sequential` tools."""

    def __init__(
        self, runner: ToolRunner, tg: anyio.abc.TaskGroup, enabled: bool, wake: Callable[[], None]
    ) -> None:
        self.runner = runner
        self.tg = tg
        self.enabled = enabled
        self._wake = wake
        self._done: list[anyio.Event] = []
        self._last_sequential: anyio.Event | None = None
        self.active = 0

    def submit(self, index: int, call: ToolCall) -> None:
        runner = self.runner
        st = runner.state
        st.block.append(call)
        if not self.enabled or runner.recovered(index, call):
            return
        tool = runner.tools.get(call.name)
        limit = runner.limits.max_tool_calls
        if limit is not None and runner.calls_this_run() >= limit:
            runner.store(index, call, "Not run: the run's tool-call limit was reached.", True, "limit")
            return
        if tool is not None and tool.requires_approval and runner.approver is None:
            st.pending.append(index)
            runner.emit_soon(ev.ApprovalRequired(st.step, call))
            return
        st.usage.tool_calls += 1
        done = anyio.Event()
        sequential = tool is not None and tool.sequential
        waits = list(self._done) if sequential else []
        if self._last_sequential is not None:
            waits.append(self._last_sequential)
        self._done.append(done)
        if sequential:
            self._last_sequential = done
        self.active += 1
        self.tg.start_soon(self._run, index, call, waits, done)

    def refuse(self, index: int, call: ToolCall, reason: str) -> None:
        """A call the parse policy will not run: it still gets a result, saying why (`dsml.policy`)."""
        self.runner.state.block.append(call)
        self.runner.store(index, call, REFUSED_NOTE.format(reason=reason), True, "malformed")

    async def _run(self, index: int, call: ToolCall, waits: list[anyio.Event], done: anyio.Event) -> None:
        try:
            for w in waits:
                await w.wait()
            await self.runner.traced(index, call)
        finally:
            self.active -= 1
            done.set()
            self._wake()
