"""`SandboxPool`: pre-started Docker containers, so an agent gets a sandbox in milliseconds.

A container start costs a few hundred milliseconds; a pool pays it ahead of time, in the background.
Containers are never reused: each `acquire()` hands out a container no one has run anything in, and
the session removes it on close; the pool immediately starts a replacement. Containers that waited
in the pool for more than half their TTL are thrown away rather than handed out nearly expired.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from dataclasses import replace
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import TaskGroup

from .base import SandboxError
from .docker import DockerConfig, DockerSandbox, _suppress_docker, create_container, docker_client

_RETRY_S = 1.0


class SandboxPool:
    """`async with SandboxPool(size=4) as pool: sb = await pool.acquire()`; close each sandbox after use."""

    def __init__(
        self, config: DockerConfig | None = None, *, size: int = 2, client: Any = None, **options: Any
    ) -> None:
        if size < 0:
            raise ValueError(f"pool size must be >= 0, got {size}")
        self.config = replace(config or DockerConfig(), **options)
        self.size = size
        self._client = client
        self._ready: deque[tuple[float, Any]] = deque()
        self._inflight = 0
        self._wake = anyio.Event()
        self._changed = anyio.Event()
        self._tg: TaskGroup | None = None
        self._closed = False
        self.last_error: BaseException | None = None
        self.stats = {"warm": 0, "cold": 0, "discarded": 0}

    @property
    def ready(self) -> int:
        return len(self._ready)

    async def __aenter__(self) -> SandboxPool:
        if self._client is None:
            self._client = await anyio.to_thread.run_sync(docker_client)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._refill_loop)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop refilling and remove the containers nobody acquired (acquired ones belong to sessions).

        Must run in the task that entered the pool: the refill task group is scoped to it.
        """
        if self._closed:
            return
        self._closed = True
        if self._tg is not None:
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(None, None, None)
        with anyio.CancelScope(shield=True):
            leftovers = list(self._ready)
            self._ready.clear()
            self._notify()

            def remove_all() -> None:
                for _, c in leftovers:
                    with _suppress_docker():
                        c.remove(force=True, v=True)

            await anyio.to_thread.run_sync(remove_all)

    async def wait_ready(self, n: int | None = None) -> None:
        """Block until `n` (default: the pool size) containers are ready; for start-up and benchmarks."""
        target = self.size if n is None else n
        while len(self._ready) < target:
            if self._closed:
                raise SandboxError("pool is closed")
            await self._changed.wait()

    async def acquire(self) -> DockerSandbox:
        """A fresh, started sandbox: a pooled one if ready, else the next one in flight, else a cold start."""
        if self._closed or self._tg is None:
            raise SandboxError("pool is not open (use `async with SandboxPool(...)`)")
        while True:
            while self._ready:
                born, container = self._ready.popleft()
                self._wake.set()
                if time.monotonic() - born < self.config.ttl / 2:
                    self.stats["warm"] += 1
                    return DockerSandbox._adopt(self._client, container, self.config)
                self.stats["discarded"] += 1
                self._tg.start_soon(anyio.to_thread.run_sync, _remove, container)
            if self._inflight == 0 or self.size == 0:
                break
            await self._changed.wait()
        self.stats["cold"] += 1
        sb = DockerSandbox(self.config, client=self._client)
        return await sb.start()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _refill_loop(self) -> None:
        assert self._tg is not None
        while True:
            while len(self._ready) + self._inflight < self.size:
                self._inflight += 1
                self._tg.start_soon(self._make_one)
            await self._wake.wait()
            self._wake = anyio.Event()

    async def _make_one(self) -> None:
        try:
            # shielded: a create the pool's closing interrupted would leave a container behind
            with anyio.CancelScope(shield=True):
                container = await anyio.to_thread.run_sync(
                    create_container, self._client, self.config, uuid.uuid4().hex, self.config.key()
                )
        except SandboxError as e:
            self.last_error = e
            self._inflight -= 1
            self._notify()
            await anyio.sleep(_RETRY_S)  # an engine hiccup must not become a tight create loop
            self._wake.set()
            return
        self._inflight -= 1
        if self._closed or self._tg is None or self._tg.cancel_scope.cancel_called:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_remove, container)
            return
        self._ready.append((time.monotonic(), container))
        self._notify()


def _remove(container: Any) -> None:
    with _suppress_docker():
        container.remove(force=True, v=True)
