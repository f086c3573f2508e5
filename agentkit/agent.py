"""`Agent`: a model, typed tools, instructions and limits; `run`, `stream`, `run_sync`.

An agent is configuration only. Everything a run changes lives in a `RunState` (plain data), so one
agent can serve many concurrent runs, and a paused or finished run can be saved, loaded in another
process and resumed with the same agent definition.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio

from agentkit import events as ev
from agentkit.backends import Model, resolve
from agentkit.backends.base import check_thinking, encoder_mode
from agentkit.dsml import encode as dsml_encode
from agentkit.limits import Limits, Usage
from agentkit.loop import Approver, Emit, Loop
from agentkit.messages import Message, SystemMessage, ToolCall, Transcript, UserMessage, message_to_dict
from agentkit.output import OutputSpec
from agentkit.recovery import recover
from agentkit.session import RunState, StepRecord, load_session, save_session
from agentkit.store import RunStore, open_store
from agentkit.subagent import load_children_kv, save_children_kv, subagent_tool
from agentkit.toolsets import ToolsetOwner, announce_tool_changes, is_toolset, tools_for_run

if TYPE_CHECKING:
    from agentkit.runtime.engine import Engine
    from agentkit.tools.tool import Tool

DepsT = TypeVar("DepsT")
OutputT = TypeVar("OutputT")


class RunError(RuntimeError):
    """A run could not start or continue (wrong state, missing approval decisions)."""


@dataclass(slots=True)
class RunResult(Generic[OutputT]):
    """What a run produced. `status` is "completed", "paused" (approvals pending), "limit:<name>",
    "output_invalid" (structured output failed validation after its retries), "truncated" (the final
    turn hit `Limits.max_tokens_per_step`), "cancelled" or "error"."""

    status: str
    text: str | None
    output: OutputT | None
    usage: Usage
    state: RunState

    @property
    def ok(self) -> bool:
        return self.status == "completed"

    @property
    def transcript(self) -> Transcript:
        return self.state.transcript

    @property
    def messages(self) -> list[Message]:
        return self.state.messages

    @property
    def pending_approvals(self) -> list[ToolCall]:
        return self.state.pending_calls

    @property
    def steps(self) -> list[StepRecord]:
        """Per-step records: each model call's tokens, latency and finish, each tool call's outcome."""
        return self.state.steps


async def _ignore(_: ev.Event) -> None:
    return None


class Agent(ToolsetOwner, Generic[DepsT, OutputT]):
    """A model, typed tools, instructions and limits.

    `model`: a `Model`, a spec string (`embedded:tiny`, `completions:<url>#<model>`,
    `chat:<url>#<model>`, `deepseek:<model>`) or an `agentkit.runtime.Engine` (agents with the same
    embedded model string, or the same engine, share one engine: their steps are batched together and
    their common prompt prefixes are prefilled once). `tools`: `@tool` objects or plain functions (wrapped),
    and toolsets such as `agentkit.mcp.MCPServer` (listed as each run starts; closed with the agent).
    `thinking`: "off" (chat mode), "high" (thinking), "max" (thinking + the max-effort preamble).
    `sandbox`: a sandbox the caller owns, or a backend name / factory the run opens and closes itself.
    `output_type`: validate the final answer as this type (JSON), feeding failures back to the model.
    `deps`: handed to tools through `RunContext.deps`. `approver`: decides `requires_approval` calls
    in-process (True, False or a denial reason); without one such calls pause the run.
    `store`: make runs durable: a `RunStore`, a folder (one JSON file per run) or a `*.db` path
    (SQLite). Each run is saved at every point it could resume from; `agent.resume(run_id)` continues
    one whose process died. The embedded backend's KV state is saved along when it is at most
    `kv_limit` bytes (else a resumed run re-prefills its transcript).
    """

    trace_content: bool | None = None  # OpenTelemetry spans carry prompts and tool I/O (agentkit.tracing)

    def __init__(
        self,
        model: str | Model | Engine,
        tools: Sequence[Any] = (),
        *,
        instructions: str = "",
        thinking: str = "high",
        limits: Limits | None = None,
        sandbox: Any = None,
        output_type: type[OutputT] | None = None,
        deps: DepsT | None = None,
        approver: Approver | None = None,
        store: RunStore | str | Path | None = None,
        kv_limit: int = 64 << 20,
    ) -> None:
        from agentkit.tools.tool import Tool, tool

        self.model: Model = resolve(model)
        self.thinking = check_thinking(thinking)
        self.instructions = instructions
        self.limits = limits or Limits()
        self.sandbox = sandbox
        self.deps = deps
        self.approver = approver
        self.store: RunStore | None = open_store(store) if store is not None else None
        self.kv_limit = kv_limit
        self._kv_too_big: set[str] = set()
        self.tools: dict[str, Tool] = {}
        self.toolsets: list[Any] = [t for t in tools if is_toolset(t)]  # MCP servers: listed per run
        for t in tools:
            if is_toolset(t):
                continue
            obj = t if isinstance(t, Tool) else tool(t)
            if obj.name in self.tools:
                raise ValueError(f"two tools are named {obj.name!r}; tool names must be unique")
            self.tools[obj.name] = obj
        self.tool_schemas = [t.openai_schema() for t in self.tools.values()]
        self.output_type = output_type
        self.output: OutputSpec | None = None
        if output_type is not None and output_type is not str:
            self.output = OutputSpec(output_type)

    @property
    def output_schema(self) -> dict[str, Any] | None:
        return self.output.schema if self.output is not None else None

    def parse_output(self, text: str | None) -> Any:
        if self.output is None:
            return text
        return self.output.parse(text)

    def initial_messages(self, task: str) -> list[Message]:
        system = SystemMessage(self.instructions, self.tool_schemas or None, self.output_schema)
        return [system, UserMessage(task)]

    def new_state(self, task: str) -> RunState:
        if not isinstance(task, str):
            raise TypeError(f"task must be a string, got {type(task).__name__}")
        st = RunState(thinking=self.thinking)
        st.messages = self.initial_messages(task)
        mode, effort = encoder_mode(self.thinking)
        st.transcript.append(
            dsml_encode.encode_messages(
                [message_to_dict(m) for m in st.messages], mode, drop_thinking=False, reasoning_effort=effort
            )
        )
        return st

    # -- sessions ---------------------------------------------------------------------------------

    def save_session(self, path: str | Path, run: RunResult[Any] | RunState) -> Path:
        """Save a run (finished or paused); with the embedded backend its KV state goes along."""
        state = run.state if isinstance(run, RunResult) else run
        export = getattr(self.model, "export_state", None)
        kv = export(state.run_id) if export is not None else None
        save_children_kv(self, state, path)  # paused sub-agents' KV states, in a file beside it
        return save_session(path, state, kv=kv)

    def load_session(self, path: str | Path) -> RunState:
        """Load a saved run; a KV snapshot is handed to a backend that can use it (others re-prefill)."""
        state, kv = load_session(path)
        importer = getattr(self.model, "import_state", None)
        if kv is not None and importer is not None:
            importer(state.run_id, kv, state.transcript)
        load_children_kv(self, state, path)
        return state

    def fork(
        self, run: RunResult[Any] | RunState, n: int, *, run_ids: Sequence[str] | None = None
    ) -> list[RunState]:
        """n independent copies of a run, each to be continued on its own (concurrently, e.g. best-of-n:
        `await agent.run(state=branch)` for a fresh `new_state(task)`, `agent.run(task, state=branch)` for
        a follow-up, approvals for a paused one); the original is left as it was.

        Why more than copying the RunState: the embedded backend lets the branches share the run's KV
        state (`fork_state`), so the common context is neither copied nor prefilled again: each branch's
        next model call restores it and prefills only its new tokens (branches of a run that has not called
        the model yet share their prompt through the engine's prefix cache instead). With temperature > 0
        each branch samples with its own seed, derived from its run id: pass `run_ids` to reproduce a fork.
        """
        state = run.state if isinstance(run, RunResult) else run
        if n < 1:
            raise ValueError(f"fork needs n >= 1, got {n}")
        ids = list(run_ids) if run_ids is not None else [uuid.uuid4().hex for _ in range(n)]
        if len(ids) != n or len(set(ids)) != n or state.run_id in ids:
            raise ValueError("run_ids must be n distinct ids, none of them the forked run's own")
        blob = state.to_json()
        branches = []
        for rid in ids:
            branch = RunState.from_json(blob)
            branch.run_id = rid
            branches.append(branch)
        share = getattr(self.model, "fork_state", None)
        if share is not None:
            share(state.run_id, ids)
        return branches

    def as_tool(self, name: str, description: str, **options: Any) -> Tool:
        """This agent as a sub-agent another agent delegates subtasks to (`agentkit.subagent`)."""
        return subagent_tool(self, name, description, **options)

    # -- running ----------------------------------------------------------------------------------

    def _prepare(
        self, task: str | None, state: RunState | None, approvals: dict[str, bool | str] | None
    ) -> RunState:
        if state is None:
            if task is None:
                raise RunError("give a task, or a state to resume")
            return self.new_state(task)
        if state.thinking != self.thinking:
            raise RunError(
                f"state was made with thinking={state.thinking!r}, this agent uses {self.thinking!r}"
            )
        if state.status == "paused":
            if task is not None:
                raise RunError("the run is paused on approvals; resume it with approvals=..., not a new task")
            pending = [c.id for c in state.pending_calls]
            missing = [i for i in pending if i not in (approvals or {})]
            if missing:
                raise RunError(f"approval decisions missing for pending calls {missing}")
            unknown = sorted(set(approvals or {}) - set(pending))
            if unknown:
                raise RunError(
                    f"approval decisions for calls that are not pending: {unknown} (pending: {pending})"
                )
            bad = [i for i, d in (approvals or {}).items() if not isinstance(d, (bool, str))]
            if bad:
                raise RunError(f"a decision is True, False or a denial reason (str); got others for {bad}")
            return state
        if task is not None:
            if state.status == "running":
                raise RunError("the run has not finished; resume it without a new task first")
            state.note = task if state.note is None else state.note + "\n\n" + task
        state.final_requested = None
        state.output_retries_used = 0
        state.baseline = {
            "step": float(state.step),
            **{k: float(v) for k, v in state.usage.to_dict().items()},
        }
        state.baseline.pop("context_tokens", None)
        state.status = "running"
        return state

    # -- durable runs -----------------------------------------------------------------------------

    def _checkpoint(self, st: RunState, with_kv: bool) -> None:
        """Save the run to the store; with `with_kv`, the backend's KV state too when small enough."""
        assert self.store is not None
        kv, keep = None, True
        export = getattr(self.model, "export_state", None)
        if with_kv and export is not None and st.run_id not in self._kv_too_big:
            try:
                blob = export(st.run_id)
            except Exception:  # no state for this run (yet): keep whatever was saved before
                blob = None
            if blob is not None and len(blob) <= self.kv_limit:
                kv, keep = blob, False
            elif blob is not None:  # too big to save each step: a resume re-prefills instead
                self._kv_too_big.add(st.run_id)
                keep = False
        self.store.save(st, kv, keep_kv=keep)

    def _load(self, run_id: str, force: bool) -> tuple[RunState, bool]:
        """(state, crashed) from the store; a crashed run's KV goes back to the backend if it fits."""
        if self.store is None:
            raise RunError("resume(run_id) needs an agent with a store (Agent(..., store=...))")
        record = self.store.load(run_id)
        state = record.state
        if state.status == "running" and record.owner_alive() and not force:
            raise RunError(
                f"run {run_id!r} is still running in process {record.owner} (force=True to take it over)"
            )
        importer = getattr(self.model, "import_state", None)
        if record.kv is not None and importer is not None:
            with contextlib.suppress(Exception):  # a KV that no longer fits is recomputed instead
                importer(state.run_id, record.kv, state.transcript)
        return state, state.status == "running"

    async def _open_sandbox(self) -> tuple[Any, bool]:
        """(sandbox, owned): a string or factory opens one for this run, which the run then closes."""
        spec = self.sandbox
        if spec is None:
            return None, False
        sb: Any
        if isinstance(spec, str):
            from agentkit.tools.sandbox import open_sandbox

            backend: Any = spec  # open_sandbox names an unknown backend itself
            sb = open_sandbox(backend=backend)
        elif callable(spec) and not hasattr(spec, "exec"):
            sb = spec()
        else:
            return spec, False
        if inspect.isawaitable(sb):
            sb = await sb
        if hasattr(sb, "__aenter__") and not hasattr(sb, "exec"):
            raise RunError("the sandbox factory must return a sandbox (or an awaitable of one)")
        return sb, True

    async def _drive(
        self, loop: Loop, ctx: Any, approvals: dict[str, bool | str] | None, crashed: bool = False
    ) -> None:
        """Run the loop; with a wall-time limit, a watchdog cancels the tools still running when it
        expires (they report "cancelled"), and the loop then asks for the final answer."""
        st = loop.state
        wall = self.limits.max_wall_time_s
        try:
            async with anyio.create_task_group() as tg:
                if wall is not None:

                    async def watchdog() -> None:
                        await anyio.sleep(max(wall - loop.elapsed(), 0.0))
                        ctx.cancellation.cancel("the run's wall-time limit was reached")

                    tg.start_soon(watchdog)
                if crashed:
                    await recover(loop)
                else:
                    if st.status == "paused":
                        st.status = "running"
                        await loop.resolve_pending(approvals or {})
                    if st.pending:  # a sub-agent call's child paused again, on approvals of its own
                        st.status = "paused"
                    else:
                        await loop.run()
                tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise

    async def _execute(
        self,
        task: str | None,
        state: RunState | None,
        approvals: dict[str, bool | str] | None,
        emit: Emit,
        *,
        run_id: str | None = None,
        resume_id: str | None = None,
        force: bool = False,
    ) -> RunResult[OutputT]:
        from agentkit.tools.context import RunContext

        crashed = False
        if resume_id is not None:
            state, crashed = self._load(resume_id, force)
        spec = await tools_for_run(self)  # the tools this run prompts with and dispatches to
        st = self._prepare(task, state, approvals) if not crashed else state
        assert st is not None
        announce_tool_changes(st, spec)  # a continued conversation hears of added / removed tools
        if run_id is not None and state is None:
            st.run_id = run_id
        sandbox, owned = await self._open_sandbox()
        ctx: RunContext[Any] = RunContext(deps=self.deps, sandbox=sandbox, run_id=st.run_id)
        loop = Loop(spec, st, emit, ctx)
        if self.store is not None:
            loop.checkpoint = lambda with_kv: self._checkpoint(st, with_kv)
            loop.checkpoint(False)
        try:
            with loop.trace.run():
                await self._drive(loop, ctx, approvals, crashed)
        except anyio.get_cancelled_exc_class():
            st.status = "cancelled"
            ctx.cancellation.cancel("the run was cancelled")
            raise
        except BaseException:
            st.status = "error" if st.status == "running" else st.status
            ctx.cancellation.cancel("the run failed")
            raise
        finally:
            st.elapsed_s = loop.elapsed()
            if self.store is not None and st.status != "running":
                self._checkpoint(st, with_kv=True)
            if owned and sandbox is not None:
                with anyio.CancelScope(shield=True):
                    await sandbox.close()
        result: RunResult[OutputT] = RunResult(
            st.status,
            st.output,
            None if st.status == "output_invalid" else self.parse_output(st.output),
            st.usage,
            st,
        )
        await emit(ev.RunEnd(st.status, st.output, result))
        return result

    async def run(
        self,
        task: str | None = None,
        *,
        state: RunState | str | None = None,
        approvals: dict[str, bool | str] | None = None,
        run_id: str | None = None,
    ) -> RunResult[OutputT]:
        """Run a new task, resume a paused run (`state=..., approvals={call_id: True/False/"reason"}`),
        or continue a finished one with a follow-up task (`state=..., task=...`). `run_id` names a new
        run (with a store, the key to resume it by)."""
        if isinstance(state, str):
            state = RunState.from_json(state)
        return await self._execute(task, state, approvals, _ignore, run_id=run_id)

    async def resume(
        self, run_id: str, *, approvals: dict[str, bool | str] | None = None, force: bool = False
    ) -> RunResult[OutputT]:
        """Continue a run from the agent's store: one whose process died mid-run (from its last
        checkpoint: no finished tool call runs again), or a paused one with `approvals`.

        Refuses a run whose owner process is still alive on this host (it would run tools twice),
        unless `force`.
        """
        return await self._execute(None, None, approvals, _ignore, resume_id=run_id, force=force)

    async def stream(
        self,
        task: str | None = None,
        *,
        state: RunState | str | None = None,
        approvals: dict[str, bool | str] | None = None,
    ) -> AsyncIterator[ev.Event]:
        """Events as they happen; the last one is `RunEnd` carrying the `RunResult`.

        Iterate it to the end, or close it (`aclosing`) to cancel the run, tools included.
        """
        if isinstance(state, str):
            state = RunState.from_json(state)
        send, recv = anyio.create_memory_object_stream[ev.Event](0)

        async def produce() -> None:
            async with send:
                await self._execute(task, state, approvals, send.send)

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(produce)
                try:
                    async with recv:
                        async for event in recv:
                            yield event
                finally:
                    tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise

    def run_sync(
        self,
        task: str | None = None,
        *,
        state: RunState | str | None = None,
        approvals: dict[str, bool | str] | None = None,
        backend: str = "asyncio",
    ) -> RunResult[OutputT]:
        call = functools.partial(self.run, task, state=state, approvals=approvals)
        return anyio.run(call, backend=backend)


def on_events(callback: Callable[[ev.Event], Awaitable[None] | None]) -> Emit:
    """Adapt a sync or async callback into the emit function the loop calls (for custom runners)."""

    async def emit(event: ev.Event) -> None:
        out = callback(event)
        if inspect.isawaitable(out):
            await out

    return emit


__all__ = ["Agent", "RunError", "RunResult", "on_events"]
