"""A private event loop on a daemon thread, and a way to await its coroutines from any other loop.

Why a thread: an MCP connection is an async context (the SDK's `Client` holds task groups and, for
stdio, the server process) that must be entered and left in one task of one event loop. An agent's runs
come from anywhere: several `run_sync` calls (each its own `anyio.run`), asyncio or trio, concurrently.
Owning the connection on a loop of its own lets one server process be shared by all of them and outlive
any single run, while a caller's cancellation still reaches the call it was waiting for.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import anyio

T = TypeVar("T")

__all__ = ["Bridge"]


class Bridge:
    """One daemon thread running an asyncio loop, started on first use and stopped by `stop()`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def on_loop_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is not None and self.running:
                return self._loop
            ready = threading.Event()

            def main() -> None:
                async def serve() -> None:
                    self._loop = asyncio.get_running_loop()
                    self._stopped = asyncio.Event()
                    ready.set()
                    await self._stopped.wait()

                asyncio.run(serve())

            self._thread = threading.Thread(target=main, name=f"agentkit-mcp:{self.name}", daemon=True)
            self._thread.start()
            ready.wait()
            assert self._loop is not None
            return self._loop

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule `coro` on the bridge's loop (starting the thread if needed)."""
        if self.on_loop_thread():
            coro.close()
            raise RuntimeError("Bridge.submit called from its own loop; await the coroutine instead")
        return asyncio.run_coroutine_threadsafe(_on_bridge(coro), self._start())

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await `coro` on the bridge's loop from the caller's loop (asyncio or trio).

        Cancelling the caller cancels the coroutine over there; no worker thread is held while waiting.
        """
        future = self.submit(coro)
        done = anyio.Event()
        wake = _waker(done)
        future.add_done_callback(lambda _: wake())
        try:
            await done.wait()
        except BaseException:
            future.cancel()
            raise
        return future.result()

    def call_blocking(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coro` on the bridge's loop and block this thread for its result (sync callers)."""
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """End the loop (after whatever the caller already closed on it) and join the thread."""
        with self._lock:
            loop, thread, stopped = self._loop, self._thread, self._stopped
            self._loop = self._thread = self._stopped = None
        if loop is None or thread is None or stopped is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            loop.call_soon_threadsafe(stopped.set)
        if thread is not threading.current_thread():
            thread.join(timeout)


async def _on_bridge(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` as a task of the bridge's loop. The task's context is a copy of the submitter's (which
    carries the caller's OpenTelemetry span, wanted, and a trio caller's sniffio marker, not wanted:
    anyio would then take this asyncio loop for trio)."""
    sniffio = sys.modules.get("sniffio")  # only present (and only set) where trio or others use it
    if sniffio is not None:
        sniffio.current_async_library_cvar.set(None)
    return await coro


def _waker(event: anyio.Event) -> Callable[[], None]:
    """A thread-safe, non-blocking way to set `event` on the current loop from another thread."""
    trio = sys.modules.get("trio")
    token = None
    if trio is not None:
        with contextlib.suppress(RuntimeError):  # not inside trio.run: an asyncio caller
            token = trio.lowlevel.current_trio_token()
    if token is not None:
        assert trio is not None

        def wake_trio() -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(event.set)

        return wake_trio
    loop = asyncio.get_running_loop()

    def wake_asyncio() -> None:
        with contextlib.suppress(RuntimeError):  # the caller's loop has closed: nobody is waiting
            loop.call_soon_threadsafe(event.set)

    return wake_asyncio
