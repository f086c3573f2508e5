"""What a caller of the engine holds: a `RequestHandle` per request, its result and the engine's errors.

The scheduler thread appends tokens to a handle; any number of consumers read them, each with its own
cursor, through a blocking iterator (threads) or an async iterator (asyncio or trio tasks, e.g. under
anyio). Why not a queue: a queue hands each token to one reader and loses the history, while a handle must
also answer `result()` with every token after the fact; a list under a condition variable does both.

Async waiting never parks a worker thread: the waiting task registers a waker that the scheduler thread
calls without blocking (asyncio's `call_soon_threadsafe`, trio's `TrioToken.run_sync_soon`), which sets
an `anyio.Event` the task awaits. So an async consumer is cancellable like any other await, and a slow
or closed event loop can never stall the scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import anyio
import torch
from agentkit.runtime.generate import FinishReason
from agentkit.runtime.speculative import DraftState
from agentkit.runtime.state import SequenceState

if TYPE_CHECKING:
    from agentkit.runtime.engine import Engine


class EngineError(RuntimeError):
    """The engine could not serve a request (closed engine, failed forward, failing stop callback)."""


class EngineClosed(EngineError):
    """The engine was closed before or while serving the request."""


class RequestError(ValueError):
    """A request the engine refuses up front (empty prompt, token id out of range, too long, too large)."""


EngineFinish = FinishReason | Literal["cancelled", "error"]


@dataclass
class EngineResult:
    """A finished request: what `generate()` returns for it, plus how its prompt was served."""

    token_ids: list[int]
    finish_reason: EngineFinish
    stop: int | str | tuple[int, ...] | None = None
    pending: list[int] = field(default_factory=list)
    """Tokens generated but not in the state (feed_last=False, or the sequence hit its length limit)."""
    prompt_tokens: int = 0
    cached_tokens: int = 0
    """Tokens of context that were restored (prefix cache or fork), not prefilled."""
    error: BaseException | None = None
    state: SequenceState | None = None
    """The final state, only for requests submitted with keep_state=True (what `Engine.fork` continues)."""
    last_logits: torch.Tensor | None = None
    """fp32 [V] logits after the last state position (keep_state=True, last token fed): a fork with no
    new tokens samples its first token from these."""
    draft: DraftState | None = None
    """The MTP block's state beside `state` (keep_state=True, speculating requests): pass it with the
    state to the next turn's `submit(draft=)` so the block consumes only that turn's tokens."""
    steps: int = 0
    """Decode forwards after the prompt's (a speculative step is one verify of its drafts)."""
    drafted: int = 0
    """Tokens drafted, by the MTP block and by prompt lookup (0 without speculation)."""
    accepted: int = 0
    """Drafted tokens the main model kept."""
    lookup_drafted: int = 0
    """Of `drafted`, those proposed by prompt lookup (runtime/lookup.py)."""
    lookup_accepted: int = 0
    """Of `accepted`, those proposed by prompt lookup."""

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_step(self) -> float:
        """Generated tokens per decode forward (the first token comes from the prompt's forward)."""
        return len(self.token_ids) / self.steps if self.steps else float(len(self.token_ids))


def _threadsafe_caller(fn: Callable[[], None]) -> Callable[[], None]:
    """A function any thread may call to run `fn` soon on the current event loop, without blocking."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:
        running = loop

        def wake_asyncio() -> None:
            if not running.is_closed():
                with contextlib.suppress(RuntimeError):  # closed between the check and the call
                    running.call_soon_threadsafe(fn)

        return wake_asyncio
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            token = trio.lowlevel.current_trio_token()
        except RuntimeError:
            token = None
        if token is not None:
            finished = trio.RunFinishedError

            def wake_trio() -> None:
                with contextlib.suppress(finished):
                    token.run_sync_soon(fn)

            return wake_trio
    raise EngineError("async iteration of a request needs a running asyncio or trio event loop")


class RequestHandle:
    """One request's token stream and outcome; safe to read from any thread or task, any number of times."""

    def __init__(self, engine: Engine, request_id: int, prompt_tokens: int) -> None:
        self.id = request_id
        self.prompt_tokens = prompt_tokens
        self._engine = engine
        self._cond = threading.Condition()
        self._tokens: list[int] = []
        self._result: EngineResult | None = None
        self._wakers: list[Callable[[], None]] = []

    def __repr__(self) -> str:
        state = self._result.finish_reason if self._result else "running"
        return f"<RequestHandle {self.id} {state} {len(self._tokens)} tokens>"

    # ------------------------------------------------------------------ engine side
    def _push(self, token: int) -> bool:
        """Append a token unless the request already ended (a cancel wins over a token in flight)."""
        with self._cond:
            if self._result is not None:
                return False
            self._tokens.append(token)
            self._wake()
            return True

    def _finish(self, result: EngineResult) -> None:
        with self._cond:
            if self._result is None:
                self._result = result
                self._wake()

    def _wake(self) -> None:
        self._cond.notify_all()
        wakers, self._wakers = self._wakers, []
        for w in wakers:
            w()

    # ------------------------------------------------------------------ caller side
    @property
    def done(self) -> bool:
        return self._result is not None

    @property
    def tokens(self) -> list[int]:
        """Tokens streamed so far."""
        with self._cond:
            return list(self._tokens)

    def cancel(self) -> None:
        """Stop the request: its stream ends now, its state is freed at the scheduler's next step boundary."""
        self._engine._cancel(self)

    def result(self, timeout: float | None = None) -> EngineResult:
        """Block until finished. Raises the request's error (an `EngineError`) if it failed."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._result is not None, timeout):
                raise TimeoutError(f"request {self.id} not finished after {timeout} s")
            assert self._result is not None
            return self._checked(self._result)

    async def aresult(self) -> EngineResult:
        """Await the end of the request (asyncio or trio). Raises its error if it failed."""
        async for _ in self:
            pass
        assert self._result is not None
        return self._checked(self._result)

    @staticmethod
    def _checked(result: EngineResult) -> EngineResult:
        if result.finish_reason == "error":
            raise EngineError(f"request failed: {result.error}") from result.error
        return result

    def __iter__(self) -> Iterator[int]:
        """Token ids as they are generated (blocking); ends when the request finishes or is cancelled."""
        i = 0
        while True:
            with self._cond:
                while i >= len(self._tokens) and self._result is None:
                    self._cond.wait()
                new = self._tokens[i:]
                result = self._result
            yield from new
            i += len(new)
            if result is not None:  # nothing is appended after the end, so `new` was the rest
                self._checked(result)
                return

    def __aiter__(self) -> AsyncIterator[int]:
        return self._aiter()

    async def _aiter(self) -> AsyncIterator[int]:
        i = 0
        while True:
            event = anyio.Event()
            with self._cond:
                new = self._tokens[i:]
                result = self._result
                if not new and result is None:
                    waker = _threadsafe_caller(event.set)
                    self._wakers.append(waker)
            if new or result is not None:
                for tok in new:
                    yield tok
                i += len(new)
                if result is not None:
                    self._checked(result)
                    return
                await anyio.lowlevel.checkpoint()
                continue
            try:
                await event.wait()
            finally:
                with self._cond, contextlib.suppress(ValueError):  # already taken by _wake
                    self._wakers.remove(waker)


__all__ = ["EngineClosed", "EngineError", "EngineFinish", "EngineResult", "RequestError", "RequestHandle"]
