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

__all__ = ["RunTools", "ToolNameConflict", "Toolset", "ToolsetOwner", "is_toolset", "tools_for_run"]


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
