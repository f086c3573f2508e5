"""`RunContext`: what a tool may know about the run that called it.

A tool opts in by annotating its first parameter with `RunContext` (or `RunContext[MyDeps]`); the
parameter is injected by `Tool.invoke` and never appears in the schema the model sees. Dependencies
travel through the context rather than through globals, so two agents with different databases or
sandboxes can share one tool definition in one process.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

import anyio
from agentkit.tools.sandbox.base import Sandbox, SandboxError

__all__ = ["MIN_OUTPUT_CHARS", "Cancellation", "NoSandboxError", "RunContext"]

# Smallest output budget that still fits a truncation note plus some head and tail.
MIN_OUTPUT_CHARS = 200

DepsT = TypeVar("DepsT")


class NoSandboxError(SandboxError):
    """A tool that needs a sandbox was called in a run that has none."""


class Cancellation:
    """A run-wide "stop now" switch that tools in flight honour.

    The loop (or a user pressing Ctrl-C in an app) calls `cancel()`; every tool invocation running
    under a context that shares this object is cancelled through anyio and reports a `cancelled`
    outcome instead of leaving work half-done in the background. Call `cancel()` on the event loop's
    thread; from another thread (a UI, a signal handler) go through `anyio.from_thread.run_sync`, since
    anyio cancel scopes belong to their loop. The lock only keeps the scope set consistent.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancelled = False
        self._scopes: set[anyio.CancelScope] = set()
        self.reason: str = ""

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self, reason: str = "cancelled by the run") -> None:
        with self._lock:
            if self._cancelled:
                return
            self._cancelled = True
            self.reason = reason
            scopes = list(self._scopes)
        for scope in scopes:
            scope.cancel()

    def register(self, scope: anyio.CancelScope) -> None:
        """Tie `scope` to this switch; cancels it at once if the switch was already thrown."""
        with self._lock:
            already = self._cancelled
            if not already:
                self._scopes.add(scope)
        if already:
            scope.cancel()

    def unregister(self, scope: anyio.CancelScope) -> None:
        with self._lock:
            self._scopes.discard(scope)


@dataclass(slots=True)
class RunContext(Generic[DepsT]):
    """Per-run data handed to tools that ask for it.

    `deps` is whatever the app passed to the agent (a DB handle, an HTTP client, settings). `sandbox`
    is where commands and files live for this run; built-in tools refuse to run without one rather
    than silently touching the host. `tool_name`, `tool_call_id` and `retry` are filled in per call by
    `Tool.invoke` so a tool can log or adapt (e.g. widen a search on its second attempt).
    """

    deps: DepsT = None  # type: ignore[assignment]
    sandbox: Sandbox | None = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    cancellation: Cancellation = field(default_factory=Cancellation)
    tool_name: str | None = None
    tool_call_id: str | None = None
    retry: int = 0
    max_output_chars: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_output_chars is not None and self.max_output_chars < MIN_OUTPUT_CHARS:
            raise ValueError(f"max_output_chars must be >= {MIN_OUTPUT_CHARS}, got {self.max_output_chars}")

    @property
    def cancelled(self) -> bool:
        return self.cancellation.cancelled

    def require_sandbox(self) -> Sandbox:
        """The run's sandbox, or a clear error naming the tool that needed one."""
        if self.sandbox is None:
            who = f"tool `{self.tool_name}`" if self.tool_name else "this tool"
            raise NoSandboxError(
                f"{who} needs a sandbox, but the run has none (pass sandbox=... to the agent)"
            )
        return self.sandbox

    def for_call(self, tool_name: str, tool_call_id: str | None, retry: int) -> RunContext[DepsT]:
        """A copy for one call: the per-call fields change, the run-wide parts are shared."""
        return replace(self, tool_name=tool_name, tool_call_id=tool_call_id, retry=retry)
