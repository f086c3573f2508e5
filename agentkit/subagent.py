"""Sub-agents: an `Agent` offered to another agent as a tool (`Agent.as_tool`).

Why a tool and not a new kind of step: delegating is a call with an argument (the subtask) and a result
(the child's answer), so it rides the parent's dispatch unchanged: calls the parent makes in one block run
concurrently, cancelling the parent cancels the child, the tool's timeout and output budget apply. The
child is a whole agent of its own: its instructions, tools, limits, thinking mode and sandbox setting (a
backend name opens a fresh sandbox for each delegated run; `inherit_sandbox=True` lends it the caller's).

What a plain tool could not do goes through the caller's `ToolRunner` (found in the call's
`RunContext.extra`, see `agentkit.dispatch.CALLER_KEY`):

* the child's usage is added to the caller's as it is spent, so the parent's limits and cost see it;
* the child's events go up the parent's stream as `SubAgentEvent`s;
* a child that pauses on approvals hands its `RunState` back: the parent's call waits as pending with the
  child's state inside the parent's (`RunState.children`), its calls announced as "<call id>/<child id>".
  The parent's state is then one JSON document holding the whole tree; `agent.run(state=...,
  approvals={"call_1_0/call_1_0": True})`, in this process or another, resumes the child where it
  stopped and the parent with the child's answer.

`agent.save_session` saves the paused children's KV states too (embedded backends; one file beside the
session, `<path>.children.kv`), and `agent.load_session` gives them back to the children's models, so a
child resumed in a new process prefills only what comes after its pause, as its parent does.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentkit import events as ev
from agentkit.dispatch import CALLER_KEY, ToolRunner
from agentkit.limits import Usage
from agentkit.session import RunState, SessionError
from agentkit.tools.context import RunContext
from agentkit.tools.tool import Tool, ToolError, ToolOptions

if TYPE_CHECKING:
    from agentkit.agent import Agent

__all__ = ["PAUSED_RESULT", "load_children_kv", "paused_children", "save_children_kv", "subagent_tool"]

PAUSED_RESULT = "[agentkit] The sub-agent is waiting for approvals."
_SUMMED = (
    "requests",
    "prompt_tokens",
    "cached_prompt_tokens",
    "prefilled_tokens",
    "completion_tokens",
    "decode_steps",
    "drafted_tokens",
    "accepted_tokens",
    "lookup_drafted_tokens",
    "lookup_accepted_tokens",
)


def add_usage(target: Usage, child: Usage, already: Usage) -> None:
    """Add what the child spent since `already` was counted to `target` (not its context size: that is
    the child's own window, not the caller's)."""
    for name in (*_SUMMED, "tool_calls"):
        setattr(target, name, getattr(target, name) + getattr(child, name) - getattr(already, name))
    target.cost_usd += child.cost_usd - already.cost_usd


def subagent_tool(
    agent: Agent[Any, Any],
    name: str,
    description: str,
    *,
    inherit_sandbox: bool = False,
    timeout: float | None = None,
    requires_approval: bool = False,
    max_output_chars: int | None = None,
) -> Tool:
    """A tool that runs `agent` on the subtask the calling model writes (one `task` string argument).

    The tool's result is the child's final answer (its JSON text for an agent with `output_type`); a
    child stopped by its own limits still answers (with a note saying so); any other ending (malformed,
    empty, error) is a tool error the parent model reads. `inherit_sandbox`: a child whose agent has no
    sandbox uses the caller's. A child without an `approver` uses the caller's; with neither, its
    approvals pause the caller (see the module docstring). `timeout` bounds the child's whole run;
    `requires_approval` asks before delegating at all.
    """
    if not isinstance(description, str) or not description.strip():
        raise ValueError(
            "a sub-agent tool needs a description: it is how the parent model knows when to call it"
        )

    async def delegate(ctx: RunContext[Any], task: str) -> str:
        """Hand a subtask to the sub-agent and get its answer.

        Args:
            task: the subtask, stated completely: the sub-agent sees nothing else of this conversation
        """
        caller = ctx.extra.get(CALLER_KEY)
        runner = caller if isinstance(caller, ToolRunner) else None
        call_id = ctx.tool_call_id or ""
        child = agent
        if (inherit_sandbox and agent.sandbox is None and ctx.sandbox is not None) or (
            agent.approver is None and runner is not None and runner.approver is not None
        ):
            child = copy.copy(agent)  # configuration only: a shallow copy shares model, tools and store
            if inherit_sandbox and agent.sandbox is None:
                child.sandbox = ctx.sandbox
            if agent.approver is None and runner is not None:
                child.approver = runner.approver

        async def forward(event: ev.Event) -> None:
            if runner is not None:
                runner.emit_soon(ev.SubAgentEvent(runner.state.step, call_id, name, event))

        resume = runner.resuming.get(call_id) if runner is not None else None
        if resume is not None:
            state, decisions = resume
            counted = state.usage.copy()
        else:
            state, decisions, counted = child.new_state(task), None, Usage()
            if call_id:  # one embedded KV session per delegated call, named after the caller's run
                state.run_id = f"{ctx.run_id}/{call_id}"
        try:
            result = await child._execute(None, state, decisions, forward)
        finally:
            if runner is not None:
                add_usage(runner.state.usage, state.usage, counted)
        if result.status == "paused":
            if runner is None or not call_id:
                raise ToolError(
                    f"sub-agent `{name}` paused for approvals, but it was not called from an agent run "
                    "that can pause (give the sub-agent an approver)"
                )
            runner.suspended[call_id] = result.state
            return PAUSED_RESULT
        forget = getattr(child.model, "forget", None)
        if forget is not None:  # a finished child's KV state is not needed again
            forget(state.run_id)
        text = result.text if result.text is not None else ""
        if result.ok:
            return text
        if result.status.startswith("limit:"):
            return f"{text}\n\n[agentkit] The sub-agent stopped at its limit ({result.status[6:]})."
        detail = f": {text}" if text.strip() else ""
        raise ToolError(f"sub-agent `{name}` ended with status {json.dumps(result.status)}{detail}")

    options = ToolOptions(
        name=name,
        description=description,
        timeout=timeout,
        requires_approval=requires_approval,
        max_output_chars=max_output_chars,
    )
    made = Tool(delegate, options)
    made.subagent = agent  # type: ignore[attr-defined]  # how sessions find a paused child's model
    return made


# -- the KV states of paused children, saved with the parent's session ---------------------------------

CHILDREN_KV_FORMAT = "agentkit-children-kv-1"


def paused_children(agent: Agent[Any, Any], state: RunState) -> Iterator[tuple[Agent[Any, Any], RunState]]:
    """(child agent, child state) for each paused sub-agent run inside `state`, nested ones included;
    a child whose tool this agent no longer has is skipped (it cannot be resumed here anyway)."""
    for index, child in state.children.items():
        tool = agent.tools.get(state.block[index].name)
        sub = getattr(tool, "subagent", None)
        if sub is None:
            continue
        yield sub, child
        yield from paused_children(sub, child)


def children_kv_path(path: str | Path) -> Path:
    p = Path(path)
    return p.with_name(p.name + ".children.kv")


def save_children_kv(agent: Agent[Any, Any], state: RunState, path: str | Path) -> None:
    """Write the paused children's KV states beside a session at `path` (one file, written whole and
    renamed) and mark each child saved with one (`has_kv`); a child whose model keeps no state is
    marked without, and resumes by prefilling its transcript."""
    blobs: list[tuple[str, bytes]] = []
    for sub, child in paused_children(agent, state):
        export = getattr(sub.model, "export_state", None)
        blob = None
        if export is not None:
            try:
                blob = export(child.run_id)
            except Exception:  # this model holds no state for the child (e.g. loaded without one)
                blob = None
        child.has_kv = blob is not None
        if blob is not None:
            blobs.append((child.run_id, blob))
    target = children_kv_path(path)
    if not blobs:
        target.unlink(missing_ok=True)
        return
    header = json.dumps({"format": CHILDREN_KV_FORMAT, "runs": [[rid, len(b)] for rid, b in blobs]}).encode()
    tmp = target.with_name(target.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(len(header).to_bytes(4, "big") + header)
        for _, blob in blobs:
            f.write(blob)
    tmp.replace(target)


def load_children_kv(agent: Agent[Any, Any], state: RunState, path: str | Path) -> None:
    """Hand each paused child saved with a KV state (`save_children_kv`) back to its model.
    SessionError if the file is missing or damaged; the model's own error if a state does not fit."""
    wanted = [(sub, child) for sub, child in paused_children(agent, state) if child.has_kv]
    if not wanted:
        return
    source = children_kv_path(path)
    try:
        raw = source.read_bytes()
        n = int.from_bytes(raw[:4], "big")
        header = json.loads(raw[4 : 4 + n])
        if header.get("format") != CHILDREN_KV_FORMAT:
            raise ValueError(f"format {header.get('format')!r}")
        blobs, at = {}, 4 + n
        for run_id, size in header["runs"]:
            blobs[str(run_id)] = raw[at : at + int(size)]
            at += int(size)
        if at != len(raw):
            raise ValueError(f"{len(raw) - at} bytes past the last state")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SessionError(
            f"saved run {path} has sub-agents saved with KV states, but {source}: {exc}"
        ) from exc
    for sub, child in wanted:
        importer = getattr(sub.model, "import_state", None)
        if importer is not None and child.run_id in blobs:
            importer(child.run_id, blobs[child.run_id], child.transcript)
