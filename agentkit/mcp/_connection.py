"""One MCP session to one server, on the bridge's loop: connect on demand, notice the end, reconnect.

Everything here runs on the `Bridge` thread's event loop (see `_bridge.py` for why). The official SDK's
`Client` does the protocol; this module owns its lifetime: a holder task enters the client (for stdio
that starts the server process, and leaving it stops the process tree) and keeps it open until told to
close. The read side of the transport is watched, so a server that exited while idle is reconnected
before the next call is sent, and a call cut off by the server's end is reported as such (`ConnectionLost`)
rather than as a protocol error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio

log = logging.getLogger("agentkit.mcp")

OpenTransport = Callable[[], AbstractAsyncContextManager[Any]]

__all__ = ["ConnectError", "Connection", "ConnectionLost"]


class ConnectError(RuntimeError):
    """The server could not be started or did not complete the MCP handshake."""


class ConnectionLost(RuntimeError):
    """The server's connection ended (its process exited, its HTTP session went away) during a request."""


@dataclass(eq=False)
class _Live:
    """One connection attempt's state; a new one is made for each (re)connect."""

    client: Any = None
    alive: bool = True
    stop: anyio.Event = field(default_factory=anyio.Event)
    done: anyio.Event = field(default_factory=anyio.Event)
    task: asyncio.Task[None] | None = None
    dropping: bool = False


class _WatchedRead:
    """The transport's read stream, reporting its end: the server is gone once it yields EOF."""

    def __init__(self, inner: Any, live: _Live) -> None:
        self._inner = inner
        self._live = live

    async def receive(self) -> Any:
        try:
            return await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._live.alive = False
            raise

    def __aiter__(self) -> _WatchedRead:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._inner.__anext__()
        except (StopAsyncIteration, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._live.alive = False
            raise

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> _WatchedRead:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> Any:
        return await self._inner.__aexit__(*exc)

    def __getattr__(self, name: str) -> Any:  # e.g. `last_context`, which the SDK reads duck-typed
        return getattr(self._inner, name)


def _consume(future: asyncio.Future[None]) -> None:
    """Mark a connect future's exception as seen (the connect was abandoned; nobody will read it)."""
    if future.done() and not future.cancelled():
        future.exception()


def describe(exc: BaseException) -> str:
    """The innermost useful message of an exception (task groups wrap one failure in a group)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Connection:
    """The session to one server. Methods are called on the bridge loop only."""

    def __init__(self, label: str, open_transport: OpenTransport, connect_timeout: float) -> None:
        self.label = label
        self._open_transport = open_transport
        self.connect_timeout = connect_timeout
        self._live: _Live | None = None
        self._holders: set[_Live] = set()  # every holder task not finished yet, connected or not
        self._retiring: set[asyncio.Task[None]] = set()  # background teardowns (strong references)
        self._lock: anyio.Lock | None = None
        self.tools_changed = True  # set by list-changed notifications, read from other threads
        self.connects = 0

    @property
    def connected(self) -> bool:
        return self._live is not None and self._live.alive

    async def client(self) -> tuple[Any, _Live]:
        """The live client, connecting (or reconnecting after the server's end) first if needed."""
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            live = self._live
            if live is not None and live.alive:
                return live.client, live
            if live is not None:
                self._retire(live)
            live = await self._connect()
            self._live = live
            return live.client, live

    async def _connect(self) -> _Live:
        live = _Live()
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._holders.add(live)
        live.task = asyncio.create_task(self._hold(live, ready), name=f"mcp:{self.label}")
        try:
            with anyio.fail_after(self.connect_timeout):
                await asyncio.shield(ready)
        except TimeoutError:
            await self._drop(live, cancel=True)
            _consume(ready)
            raise ConnectError(
                f"MCP server `{self.label}` did not finish connecting within {self.connect_timeout:g} s"
            ) from None
        except BaseException:
            await self._drop(live, cancel=True)
            _consume(ready)
            raise
        self.connects += 1
        self.tools_changed = True  # a new session (maybe a restarted server): list its tools again
        return live

    async def _hold(self, live: _Live, ready: asyncio.Future[None]) -> None:
        """Enter the client, keep it open until `live.stop`, leave it (stopping a stdio server)."""
        from mcp import Client

        try:
            async with self._watched_transport(live) as transport:
                client = Client(transport, cache=None, message_handler=self._on_message)
                async with client:
                    live.client = client
                    if not ready.done():
                        ready.set_result(None)
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self._listen, client)
                        await live.stop.wait()
                        tg.cancel_scope.cancel()
        except asyncio.CancelledError:
            if not ready.done():
                ready.set_exception(ConnectError(f"connecting to MCP server `{self.label}` was cancelled"))
            raise
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(
                    ConnectError(f"could not connect to MCP server `{self.label}`: {describe(exc)}")
                )
            else:
                log.debug("MCP server %s: connection ended: %s", self.label, describe(exc))
        finally:
            live.alive = False
            live.done.set()
            self._holders.discard(live)

    @asynccontextmanager
    async def _watched_transport(self, live: _Live) -> AsyncIterator[Any]:
        @asynccontextmanager
        async def transport() -> AsyncIterator[Any]:
            async with self._open_transport() as (read, write):
                yield _WatchedRead(read, live), write

        yield transport()

    async def _on_message(self, message: Any) -> None:
        if getattr(message, "method", None) == "notifications/tools/list_changed":
            self.tools_changed = True
        await anyio.lowlevel.checkpoint()

    async def _listen(self, client: Any) -> None:
        """Modern (2026-07-28) servers push list changes only to a `subscriptions/listen` stream; older
        ones send the notification unasked (`_on_message` sees both)."""
        caps = client.server_capabilities
        if caps.tools is None or not caps.tools.list_changed:
            return
        try:
            async with client.listen(tools_list_changed=True) as sub:
                async for _ in sub:
                    self.tools_changed = True
        except Exception as exc:  # not supported (older protocol) or the stream dropped: notices still work
            log.debug("MCP server %s: no list-changed subscription: %s", self.label, describe(exc))

    async def request(self, send: Callable[[Any], Any], limit_s: float | None) -> Any:
        """Run one request on the live client; the server's end during it becomes `ConnectionLost`."""
        from mcp import MCPError
        from mcp.types import CONNECTION_CLOSED

        client, live = await self.client()
        try:
            with anyio.fail_after(limit_s):
                return await send(client)
        except MCPError as exc:
            if exc.code != CONNECTION_CLOSED and live.alive:
                raise
            await self._lost(live)
            raise ConnectionLost(describe(exc)) from None
        except TimeoutError:  # an OSError too, but the server is still there
            raise
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream, OSError) as exc:
            await self._lost(live)
            raise ConnectionLost(describe(exc)) from None

    async def _lost(self, live: _Live) -> None:
        live.alive = False
        if self._live is live:
            self._live = None
        self._retire(live)
        await anyio.lowlevel.checkpoint()

    def _retire(self, live: _Live) -> None:
        """Tear an ended session down in the background: the call that found it ended answers at once
        (an unreachable HTTP server can take its connect timeout to refuse the session's DELETE), and
        `close()` still waits for the teardown, through `_holders`."""
        task = asyncio.get_running_loop().create_task(self._drop(live))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _drop(self, live: _Live, cancel: bool = False) -> None:
        """Close one connection and wait for its holder to finish (the process tree is gone then).

        `cancel`: the holder may still be connecting, so it will not see `stop`; cancel it instead (the
        SDK's stdio transport stops the process under cancellation too). A holder already being stopped
        by another task is waited for, not cancelled again in the middle of its shutdown."""
        task = live.task
        if live.dropping or task is None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(30):
                await live.done.wait()
            return
        live.dropping = True
        live.stop.set()
        if not task.done():
            if not cancel:
                with anyio.CancelScope(shield=True), anyio.move_on_after(15):
                    await live.done.wait()
            if not task.done():
                task.cancel()
                with anyio.CancelScope(shield=True), anyio.move_on_after(30):
                    await live.done.wait()

    async def close(self) -> None:
        """Stop the session and every holder still connecting or stopping: when this returns, no task
        of this connection runs on the bridge loop (stopping the loop would cut a shutdown short)."""
        live, self._live = self._live, None
        if live is not None:
            await self._drop(live)
        for other in list(self._holders):
            await self._drop(other, cancel=other.client is None)
        if self._retiring:
            with anyio.CancelScope(shield=True):
                await asyncio.wait(set(self._retiring), timeout=30)
