"""Typed conversation messages and the token-exact, append-only Transcript.

Two views of one conversation are kept side by side: the message list (what a chat API needs, and what
the DSML encoder renders) and the Transcript (the exact text, and for the embedded runtime the exact token
ids, the model saw and produced). The transcript is never re-rendered: a step appends the model's output
verbatim and then a framework-written suffix. Only context compaction starts a new transcript (a new
`epoch`), which tells a backend holding KV state that its cached prefix is void.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]
    raw_arguments: str | None = None  # set when the model's arguments were not a JSON object

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "name": self.name, "arguments": self.arguments}
        if self.raw_arguments is not None:
            out["raw_arguments"] = self.raw_arguments
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ToolCall:
        return cls(data["id"], data["name"], dict(data["arguments"]), data.get("raw_arguments"))

    def arguments_json(self) -> str:
        if self.raw_arguments is not None:
            return self.raw_arguments
        return json.dumps(self.arguments, ensure_ascii=False)

    def signature(self) -> str:
        """Identity used to notice the model repeating the same failing call."""
        return (
            self.name + "\x00" + json.dumps(self.arguments, sort_keys=True, ensure_ascii=False, default=str)
        )


@dataclass(slots=True)
class SystemMessage:
    content: str
    tools: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None
    role: Literal["system"] = "system"


@dataclass(slots=True)
class UserMessage:
    content: str
    role: Literal["user"] = "user"


@dataclass(slots=True)
class AssistantMessage:
    content: str = ""
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    role: Literal["assistant"] = "assistant"


@dataclass(slots=True)
class ToolMessage:
    call_id: str
    name: str
    content: str
    is_error: bool = False
    role: Literal["tool"] = "tool"


Message = SystemMessage | UserMessage | AssistantMessage | ToolMessage


def message_to_dict(msg: Message) -> dict[str, Any]:
    """The OpenAI/DeepSeek wire shape, which is also what the DSML encoder consumes."""
    if isinstance(msg, SystemMessage):
        out: dict[str, Any] = {"role": "system", "content": msg.content}
        if msg.tools:
            out["tools"] = msg.tools
        if msg.response_format is not None:
            out["response_format"] = msg.response_format
        return out
    if isinstance(msg, UserMessage):
        return {"role": "user", "content": msg.content}
    if isinstance(msg, ToolMessage):
        return {"role": "tool", "tool_call_id": msg.call_id, "name": msg.name, "content": msg.content}
    out = {"role": "assistant", "content": msg.content}
    if msg.reasoning_content is not None:
        out["reasoning_content"] = msg.reasoning_content
    if msg.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments_json()}}
            for c in msg.tool_calls
        ]
    return out


def message_from_dict(data: dict[str, Any]) -> Message:
    role = data.get("role")
    if role == "system":
        return SystemMessage(data["content"], data.get("tools"), data.get("response_format"))
    if role == "user":
        return UserMessage(data["content"])
    if role == "tool":
        return ToolMessage(data["tool_call_id"], data.get("name", ""), data["content"])
    if role == "assistant":
        calls = []
        for raw in data.get("tool_calls") or []:
            fn = raw["function"]
            args_text = fn.get("arguments") or "{}"
            try:
                args = json.loads(args_text)
            except json.JSONDecodeError:
                args = None
            if isinstance(args, dict):
                calls.append(ToolCall(raw.get("id", ""), fn["name"], args))
            else:
                calls.append(ToolCall(raw.get("id", ""), fn["name"], {}, args_text))
        return AssistantMessage(data.get("content") or "", data.get("reasoning_content"), calls)
    raise ValueError(f"unknown message role {role!r} in {data!r}")


@dataclass(slots=True)
class Segment:
    """One appended piece. `token_ids` is set for text that came out of the model as tokens (kept
    verbatim, never re-tokenized) or once a backend has tokenized framework-written text.

    `trusted` is False for text from outside (tool output): a tokenizer must encode it as plain text,
    so a tool that prints `<｜Assistant｜>` cannot forge a turn boundary.
    """

    text: str
    generated: bool
    token_ids: list[int] | None = None
    trusted: bool = True


class Transcript:
    """The exact text (and token ids where known) of the conversation, appended to, never re-rendered."""

    __slots__ = ("_cache", "_parts", "epoch", "n_chars", "segments")

    def __init__(self, epoch: int = 0) -> None:
        self.segments: list[Segment] = []
        self.epoch = epoch
        self.n_chars = 0
        self._parts: list[str] = []
        self._cache: str | None = ""

    def append(
        self, text: str, *, generated: bool = False, token_ids: list[int] | None = None, trusted: bool = True
    ) -> None:
        if not text and not token_ids:
            return
        self.segments.append(Segment(text, generated, token_ids, trusted))
        self.n_chars += len(text)
        self._parts.append(text)
        self._cache = None

    @property
    def text(self) -> str:
        if self._cache is None:
            self._cache = "".join(self._parts)
            self._parts = [self._cache]
        return self._cache

    def __len__(self) -> int:
        return len(self.segments)

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "segments": [[s.text, s.generated, s.token_ids, s.trusted] for s in self.segments],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Transcript:
        tr = cls(int(data.get("epoch", 0)))
        for text, generated, ids, *rest in data["segments"]:
            ids_list = list(ids) if ids is not None else None
            tr.append(
                text, generated=bool(generated), token_ids=ids_list, trusted=bool(rest[0]) if rest else True
            )
        return tr


__all__ = [
    "AssistantMessage",
    "Message",
    "Segment",
    "SystemMessage",
    "ToolCall",
    "ToolMessage",
    "Transcript",
    "UserMessage",
    "message_from_dict",
    "message_to_dict",
]
