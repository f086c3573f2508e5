"""The one protocol every model backend speaks.

Backends come in two shapes. *Text* backends (scripted, raw completions, embedded runtime) continue the
run's Transcript and stream the raw DSML text the model produced; the loop parses it. *Chat* backends
(chat completions, DeepSeek API) receive the message list and stream reasoning, content and structured
tool-call deltas. The loop turns both into the same events.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from agentkit.limits import Pricing
from agentkit.messages import Message, Transcript

ThinkingMode = Literal["off", "high", "max"]
THINKING_MODES: tuple[str, ...] = ("off", "high", "max")


def check_thinking(thinking: str) -> ThinkingMode:
    if thinking not in THINKING_MODES:
        raise ValueError(f"thinking must be one of {THINKING_MODES}, got {thinking!r}")
    return thinking  # type: ignore[return-value]


def encoder_mode(thinking: ThinkingMode) -> tuple[str, str | None]:
    """(thinking_mode, reasoning_effort) as the DSML encoder names them: off = chat mode,
    high = thinking, max = thinking with the max preamble."""
    if thinking == "off":
        return "chat", None
    return "thinking", ("max" if thinking == "max" else None)


@dataclass(slots=True)
class ModelRequest:
    transcript: Transcript
    messages: Sequence[Message]
    tools: list[dict[str, Any]]
    thinking: ThinkingMode
    run_id: str
    max_tokens: int | None = None
    allow_tools: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RawText:
    """Model output text to be DSML-parsed; `token_ids` when the backend knows the exact tokens."""

    text: str
    token_ids: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class ReasoningChunk:
    text: str


@dataclass(frozen=True, slots=True)
class ContentChunk:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallChunk:
    """A structured tool-call delta (chat APIs): pieces of one call share `index`."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class Finish:
    """Last item of every stream. `reason` is "stop" (turn ended normally) or "length"."""

    reason: str
    prompt_tokens: int = 0
    cached_tokens: int = 0
    prefilled_tokens: int = 0
    completion_tokens: int = 0
    decode_steps: int = 0
    """Model forwards that produced the completion after the prompt's (embedded backend; 0: not known)."""
    drafted_tokens: int = 0
    """Speculative decoding (embedded backend): tokens drafted (MTP block and prompt lookup), and how many
    were kept; the lookup_ fields count prompt lookup's share of each."""
    accepted_tokens: int = 0
    lookup_drafted_tokens: int = 0
    lookup_accepted_tokens: int = 0


Chunk = RawText | ReasoningChunk | ContentChunk | ToolCallChunk | Finish


class ModelError(RuntimeError):
    """A backend failed in a way the run cannot recover from by itself."""


class ModelAuthError(ModelError):
    """The server rejected our credentials (401/403); retrying will not help."""


class ModelHTTPError(ModelError):
    def __init__(self, status: int, body: str, url: str) -> None:
        super().__init__(f"HTTP {status} from {url}: {body[:500]}")
        self.status = status
        self.body = body


class ModelResponseError(ModelError):
    """The server answered, but not in the protocol's shape (bad JSON, missing fields)."""


@runtime_checkable
class Model(Protocol):
    name: str
    pricing: Pricing | None

    @property
    def protocol(self) -> Literal["text", "chat"]: ...

    def stream(self, request: ModelRequest) -> AsyncIterator[Chunk]: ...

    async def aclose(self) -> None: ...


__all__ = [
    "THINKING_MODES",
    "Chunk",
    "ContentChunk",
    "Finish",
    "Model",
    "ModelAuthError",
    "ModelError",
    "ModelHTTPError",
    "ModelRequest",
    "ModelResponseError",
    "RawText",
    "ReasoningChunk",
    "ThinkingMode",
    "ToolCallChunk",
    "check_thinking",
    "encoder_mode",
]
