"""`MCPServer`: an MCP server's tools as agentkit tools, `Agent(tools=[..., server])`.

Built on the official `mcp` SDK (`pip install 'agentkit[mcp]'`), which is imported only when a server
is first used: the SDK is large and most agents never touch MCP.

Lifetime, and why: the server is started lazily (the first run that needs its tool list), shared by
every run of every agent it is given to, and stopped by `aclose()` / `close()`, which `Agent.aclose()`
and `async with Agent(...)` call. The connection lives on a private event-loop thread (`_bridge.py`), so
it survives the end of any one run (`run_sync` makes a loop per call) and a cancelled run only cancels
its own calls. Servers never closed are stopped at interpreter exit; a stdio server whose host process
dies outright exits on its own when its stdin closes, as MCP servers do.

Tool list: listed when a run starts, cached, listed again after the server says it changed (or after a
reconnect). A run keeps the list it started with: its prompt is append-only, so new tools appear in the
next run's tools section (or, for a conversation continued from its state, in a note of its next user
turn: `agentkit.toolsets.announce_tool_changes`); a call to a tool since removed gets the server's error.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import re
import sys
import threading
import weakref
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, TextIO

from agentkit.mcp._bridge import Bridge
from agentkit.mcp._connection import ConnectError, Connection, ConnectionLost, describe
from agentkit.mcp.errors import MCPCallError, MCPConnectError, MCPToolNameError, MCPUnavailableError
from agentkit.mcp.tool import MCPTool

__all__ = ["MCPCallError", "MCPConnectError", "MCPServer", "MCPToolNameError", "MCPUnavailableError"]

ApprovalRule = bool | Collection[str] | Callable[[str], bool]


_NAME_BAD = re.compile(r"[^A-Za-z0-9_-]")
_LIVE: weakref.WeakSet[MCPServer] = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()


def _matches(rule: Any, name: str, default: bool) -> bool:
    """A rule given as None (the default), a bool, a collection of names, or a predicate on a name."""
    if rule is None:
        return default
    if isinstance(rule, bool):
        return rule
    if callable(rule):
        return bool(rule(name))
    return name in rule


def _tool_name(prefix: str | None, remote: str) -> str:
    """The name the model sees: the server's, with characters DSML/OpenAI names cannot carry as `_`."""
    name = _NAME_BAD.sub("_", f"{prefix}_{remote}" if prefix else remote)
    if not name or len(name) > 64:
        raise MCPToolNameError(f"MCP tool {remote!r} gives an unusable tool name {name!r} (1-64 characters)")
    return name


class MCPServer:
    """One MCP server. Make it with `MCPServer.stdio(...)` or `MCPServer.http(...)`.

    `prefix`: put before every tool name (`fs_read_file`), to keep servers' names apart. `include`:
    offer only these of the server's tools (its names, or a predicate on them; default: all). `timeout`:
    seconds a call may take (None: no limit). `requires_approval`: True for all tools, a set of tool
    names (the server's names), or a predicate on them; such calls go through the agent's approver or
    pause the run, as Python tools marked `requires_approval` do.
    """

    def __init__(
        self,
        label: str,
        open_transport: Callable[[], AbstractAsyncContextManager[Any]],
        *,
        prefix: str | None = None,
        timeout: float | None = 120.0,
        connect_timeout: float = 30.0,
        requires_approval: ApprovalRule = False,
        include: Collection[str] | Callable[[str], bool] | None = None,
        stdio: bool = False,
    ) -> None:
        if importlib.util.find_spec("mcp") is None:
            raise MCPUnavailableError("MCPServer needs the `mcp` SDK: pip install 'agentkit[mcp]'")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
        if not connect_timeout > 0:
            raise ValueError(f"connect_timeout must be positive, got {connect_timeout!r}")
        if prefix is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", prefix):
            raise MCPToolNameError(f"prefix must be 1-32 letters, digits, '_' or '-', got {prefix!r}")
        self.label = label
        self.prefix = prefix
        self.timeout = timeout
        self.requires_approval = requires_approval
        if isinstance(include, str):
            raise TypeError("include= takes a collection of tool names or a predicate, not one string")
        self.include = include
        self._bridge = Bridge(label)
        self._conn = Connection(label, open_transport, connect_timeout)
        self._tools: list[MCPTool] | None = None
        self._next_call = "restarts the server" if stdio else "reconnects"
        self._finalizer = weakref.finalize(self, _stop, self._bridge, self._conn)
        with _LIVE_LOCK:
            _LIVE.add(self)

    # -- constructors -------------------------------------------------------------------------------

    @classmethod
    def stdio(
        cls,
        command: str,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        *,
        cwd: str | Path | None = None,
        stderr: TextIO | None = None,
        name: str | None = None,
        **options: Any,
    ) -> MCPServer:
        """A server run as a subprocess speaking MCP over its stdin/stdout.

        `env` is added to the SDK's small safe default environment (PATH, HOME, ...), not to the whole
        of this process's. The server's stderr goes to `stderr` (default: this process's stderr).
        """
        if not command:
            raise ValueError("MCPServer.stdio needs a command")
        params: dict[str, Any] = {"command": command, "args": [str(a) for a in args], "cwd": cwd}
        if env is not None:
            params["env"] = {str(k): str(v) for k, v in env.items()}

        @asynccontextmanager
        async def open_stdio() -> Any:
            from mcp.client.stdio import StdioServerParameters, stdio_client

            errlog = stderr or sys.stderr
            try:
                errlog.fileno()
            except (AttributeError, OSError, ValueError):  # a notebook's or a test's captured stderr
                errlog = _devnull()
            async with stdio_client(StdioServerParameters(**params), errlog=errlog) as streams:
                yield streams

        label = Path(command).name
        if label.startswith("python") and args and not str(args[0]).startswith("-"):
            label = Path(str(args[0])).stem  # `python server.py`: name it after the script
        return cls(name or label, open_stdio, stdio=True, **options)

    @classmethod
    def http(
        cls, url: str, headers: Mapping[str, str] | None = None, *, name: str | None = None, **options: Any
    ) -> MCPServer:
        """A server reached over MCP's streamable HTTP transport at `url` (e.g. `http://host:8000/mcp`)."""
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"MCPServer.http needs an http(s) URL, got {url!r}")
        fixed_headers = dict(headers or {})

        @asynccontextmanager
        async def open_http() -> Any:
            import httpx2
            from mcp.client.streamable_http import streamable_http_client

            async with AsyncExitStack() as stack:
                client = await stack.enter_async_context(
                    httpx2.AsyncClient(headers=fixed_headers, timeout=httpx2.Timeout(30.0, read=300.0))
                )
                yield await stack.enter_async_context(streamable_http_client(url, http_client=client))

        return cls(name or url.split("//", 1)[1].split("/", 1)[0], open_http, **options)

    # -- state --------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether a session (for stdio: a server process) is open now."""
        return self._conn.connected

    @property
    def connects(self) -> int:
        """How many sessions have been opened so far (1 + restarts after the server ended)."""
        return self._conn.connects

    def __repr__(self) -> str:
        return f"MCPServer({self.label!r}, connected={self.connected})"

    # -- the toolset protocol the agent uses ----------------------------------------------------------

    async def list_tools(self) -> list[MCPTool]:
        """The server's tools, listed again only when it said they changed (or reconnected)."""
        if self._tools is not None and not self._conn.tools_changed:
            return self._tools
        specs = await self._bridge.call(self._list_remote())
        tools = self._make_tools(specs)
        self._tools = tools
        return tools

    async def _list_remote(self) -> list[Any]:
        from mcp import MCPError

        async def fetch(client: Any) -> list[Any]:
            self._conn.tools_changed = False  # a change notice arriving from here on re-lists again
            specs: list[Any] = []
            cursor: str | None = None
            for _ in range(1000):  # a paginator that never ends must not hang the run
                page = await client.list_tools(cursor=cursor)
                specs.extend(page.tools)
                cursor = page.next_cursor
                if not cursor:
                    break
            return specs

        try:
            try:
                return list(await self._conn.request(fetch, self.timeout))
            except ConnectionLost:
                # listing changes nothing, so it is simply asked again, on a new session: the server
                # may have ended while idle a moment before its end was noticed
                return list(await self._conn.request(fetch, self.timeout))
        except ConnectError as exc:
            raise MCPConnectError(str(exc)) from None
        except (ConnectionLost, MCPError) as exc:
            self._conn.tools_changed = True
            raise MCPCallError(f"listing the tools of MCP server `{self.label}` failed: {exc}") from None

    def _make_tools(self, specs: Sequence[Any]) -> list[MCPTool]:
        tools: list[MCPTool] = []
        seen: dict[str, str] = {}
        for spec in specs:
            if not _matches(self.include, spec.name, default=True):
                continue
            name = _tool_name(self.prefix, spec.name)
            if name in seen:
                raise MCPToolNameError(
                    f"MCP server `{self.label}` tools {seen[name]!r} and {spec.name!r} both become {name!r}"
                )
            seen[name] = spec.name
            tools.append(MCPTool(self, spec, name, self._needs_approval(spec.name)))
        return tools

    def _needs_approval(self, remote: str) -> bool:
        return _matches(self.requires_approval, remote, default=False)

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> Any:
        """Call tool `name` (the server's name for it); the SDK's `CallToolResult`.

        Raises `TimeoutError` after `timeout`, `MCPConnectError` when the server cannot be (re)started,
        and `MCPCallError` when the server ended during the call (it is restarted for the next one) or
        refused the request at the protocol level.
        """
        from mcp import MCPError

        async def send(client: Any) -> Any:
            return await client.call_tool(name, arguments)

        try:
            return await self._bridge.call(self._conn.request(send, self.timeout))
        except ConnectError as exc:
            raise MCPCallError(str(exc)) from None
        except ConnectionLost as exc:
            raise MCPCallError(
                f"MCP server `{self.label}` ended while running `{name}` ({exc}); the call may or may not "
                f"have taken effect. The next call {self._next_call}."
            ) from None
        except MCPError as exc:
            raise MCPCallError(f"MCP server `{self.label}` refused the call: {describe(exc)}") from None

    # -- closing ------------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop the server (for stdio: its whole process tree) and the connection's thread.

        A later use starts it again; closing is idempotent.
        """
        if not self._bridge.running:
            return
        import anyio

        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.close)

    def close(self) -> None:
        """`aclose()` for sync code: blocks until the server has stopped."""
        _stop(self._bridge, self._conn)
        self._tools = None

    async def __aenter__(self) -> MCPServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _devnull() -> TextIO:
    """Where a server's stderr goes when ours has no file descriptor to hand a subprocess."""
    global _DEVNULL
    if _DEVNULL is None:
        _DEVNULL = open(os.devnull, "w")  # noqa: SIM115 (kept for the process's lifetime)
    return _DEVNULL


_DEVNULL: TextIO | None = None


def _stop(bridge: Bridge, conn: Connection) -> None:
    if not bridge.running or bridge.on_loop_thread():
        return
    try:
        bridge.call_blocking(conn.close(), timeout=30)
    except Exception as exc:  # a server that will not stop must not keep the caller from stopping
        sys.stderr.write(f"agentkit: stopping MCP server {conn.label} failed: {describe(exc)}\n")
    finally:
        bridge.stop()


@atexit.register
def _stop_all() -> None:
    """Stop every server still open at interpreter exit (their threads are daemons)."""
    with _LIVE_LOCK:
        servers = list(_LIVE)
    for server in servers:
        server.close()
