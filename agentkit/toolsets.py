"""Tool sources an agent lists at run time (MCP servers), next to the tools it was built with.

A toolset's tools can change between runs, while a run's prompt is append-only. So each run starts from
one listing: `tools_for_run` lists every toolset (a cached list costs nothing), merges it with the
agent's own tools and gives the loop a per-run view holding exactly those tools; the agent's `tools` /
`tool_schemas` are updated to the same listing, so `new_state` renders the same tools section.

The agent owns its toolsets: `ToolsetOwner` (mixed into `Agent`, kept here because agent.py is near its
size bar) closes them on `aclose()` / `close()` / leaving `async with agent`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from agentkit.tools.tool import Tool

__all__ = [
    "TOOLS_CHANGED",
    "RunTools",
    "ToolNameConflict",
    "Toolset",
    "ToolsetOwner",
    "announce_tool_changes",
    "is_toolset",
    "tools_for_run",
]

TOOLS_CHANGED = "[agentkit] The available tools changed since this conversation began."


class ToolNameConflict(ValueError):
    """A toolset listed a tool whose name another tool of the agent already has."""


@runtime_checkable
class Toolset(Protocol):
    """Anything that lists tools when a run starts and can be closed (an `MCPServer` is one)."""

    async def list_tools(self) -> Sequence[Tool]: ...

    async def aclose(self) -> None: ...


def is_toolset(obj: Any) -> bool:
    from agentkit.tools.tool import Tool

    return not isinstance(obj, Tool) and not callable(obj) and isinstance(obj, Toolset)


class RunTools:
    """One run's view of its agent: the agent's settings, the tools as listed when the run started."""

    def __init__(self, agent: Any, tools: dict[str, Tool], schemas: list[dict[str, Any]]) -> None:
        self._agent = agent
        self.tools = tools
        self.tool_schemas = schemas

    def __getattr__(self, name: str) -> Any:
        return getattr(self._agent, name)


async def tools_for_run(agent: Any) -> Any:
    """The spec a run uses: the agent itself when it has no toolsets, else a `RunTools` view."""
    toolsets: list[Any] = agent.toolsets
    if not toolsets:
        return agent
    merged: dict[str, Tool] = {n: t for n, t in agent.tools.items() if n not in agent.toolset_tool_names}
    listed: set[str] = set()
    for ts in toolsets:
        for t in await ts.list_tools():
            if t.name in merged:
                raise ToolNameConflict(
                    f"two tools are named {t.name!r} (one from {ts!r}); give the server a prefix= "
                    "to keep the names apart"
                )
            merged[t.name] = t
            listed.add(t.name)
    if list(merged) != list(agent.tools) or any(merged[n] is not agent.tools[n] for n in merged):
        agent.tools = merged
        agent.tool_schemas = [t.openai_schema() for t in merged.values()]
        agent.toolset_tool_names = frozenset(listed)
    return RunTools(agent, agent.tools, agent.tool_schemas)


def _announced(state: Any) -> dict[str, str]:
    """Tool name -> its schema line, as the model was told: the system prompt, then earlier change notes."""
    import json

    from agentkit.messages import SystemMessage, UserMessage

    told: dict[str, str] = {}
    for msg in state.messages:
        if isinstance(msg, SystemMessage):
            for t in msg.tools or []:
                told[t["function"]["name"]] = json.dumps(t["function"], ensure_ascii=False)
        elif isinstance(msg, UserMessage) and TOOLS_CHANGED in msg.content:
            note = msg.content.split(TOOLS_CHANGED, 1)[1]
            for line in note.splitlines():
                if line.startswith('{"name": '):
                    told[json.loads(line)["name"]] = line
                elif line.startswith("No longer available: "):
                    for name in line.removeprefix("No longer available: ").rstrip(".").split(", "):
                        told.pop(name, None)
    return told


def announce_tool_changes(state: Any, spec: Any) -> None:
    """A conversation continued after its toolsets changed: its system prompt (append-only) still lists
    the old tools, so the next user turn says what was added, changed and removed, in the tools section's
    own format. Nothing is said when nothing changed, or for an agent without toolsets."""
    if not isinstance(spec, RunTools) or not state.messages:
        return
    import json

    told = _announced(state)
    now = {s["function"]["name"]: json.dumps(s["function"], ensure_ascii=False) for s in spec.tool_schemas}
    new = [line for name, line in now.items() if told.get(name) != line]
    gone = [name for name in told if name not in now]
    if not new and not gone:
        return
    parts = [TOOLS_CHANGED]
    if new:
        parts.append("New or changed tools, in the same format as the tool list:\n" + "\n".join(new))
    if gone:
        parts.append(f"No longer available: {', '.join(gone)}.")
    text = "\n".join(parts)
    state.note = text if state.note is None else text + "\n\n" + state.note


class ToolsetOwner:
    """Closing an agent closes its toolsets (for stdio MCP servers: stops their processes)."""

    toolsets: list[Any]
    toolset_tool_names: frozenset[str] = frozenset()

    async def aclose(self) -> None:
        import anyio

        with anyio.CancelScope(shield=True):
            for ts in self.toolsets:
                await ts.aclose()

    def close(self) -> None:
        """`aclose()` for sync code."""
        import anyio

        for ts in self.toolsets:
            sync_close = getattr(ts, "close", None)
            if callable(sync_close):
                sync_close()
            else:
                anyio.run(ts.aclose)

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
