"""The state of a run as plain data: pause it, save it, resume it in another process.

Everything the loop needs to continue is here (transcript, message list, usage, counters, the current
tool block with the results already computed and the calls waiting for approval); nothing here refers
to live objects, so `RunState.to_json()` round-trips exactly. Tools, model and sandbox are supplied
again by the code that resumes (they are code, not data). With the embedded backend the KV state of
the run is saved next to the JSON (`save_session(..., kv=...)`), so a resumed run re-prefills nothing.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agentkit.limits import Usage
from agentkit.messages import Message, ToolCall, Transcript, message_from_dict, message_to_dict

FORMAT_VERSION = 1


class SessionError(ValueError):
    """A saved run could not be read (wrong version, missing fields, corrupt file)."""


@dataclass(slots=True)
class BlockResult:
    """A result already computed for the current tool block (kept while other calls await approval)."""

    content: str
    is_error: bool
    error_kind: str | None = None


@dataclass(slots=True)
class ModelRecord:
    """One model call: tokens (prompt, of them served from cache, actually prefilled, generated),
    wall time to the first chunk and to the end, and why it ended ("stop" or "length")."""

    prompt_tokens: int
    cached_tokens: int
    prefilled_tokens: int
    completion_tokens: int
    first_chunk_s: float | None
    latency_s: float
    finish_reason: str


@dataclass(slots=True)
class ToolRecord:
    """One tool call's outcome: what was asked, how long it ran, and whether (and how) it failed."""

    call_id: str
    name: str
    arguments: dict[str, Any]
    duration_s: float
    is_error: bool
    error_kind: str | None = None


@dataclass(slots=True)
class StepRecord:
    """A step as it happened: its model call and its tool calls (in the order their results landed).

    The per-step view of cost and latency; the flat message list stays the conversation itself.
    """

    step: int
    started_at: float  # seconds since the epoch
    model: ModelRecord | None = None
    tools: list[ToolRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "started_at": self.started_at,
            "model": None if self.model is None else asdict(self.model),
            "tools": [asdict(t) for t in self.tools],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepRecord:
        model = data.get("model")
        return cls(
            step=int(data["step"]),
            started_at=float(data["started_at"]),
            model=None if model is None else ModelRecord(**model),
            tools=[ToolRecord(**t) for t in data.get("tools", [])],
        )


@dataclass(slots=True)
class RunState:
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    thinking: str = "high"
    transcript: Transcript = field(default_factory=Transcript)
    messages: list[Message] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    step: int = 0
    status: str = "running"
    output: str | None = None
    elapsed_s: float = 0.0
    # the current tool block: every call in order, results computed so far, calls awaiting approval
    block: list[ToolCall] = field(default_factory=list)
    block_results: dict[int, BlockResult] = field(default_factory=dict)
    pending: list[int] = field(default_factory=list)
    # block index -> the paused run of a sub-agent that call started (`Agent.as_tool`): the call waits on
    # its child's approvals, which surface here with ids "<call id>/<child's call id>"
    children: dict[int, RunState] = field(default_factory=dict)
    tool_failures: dict[str, int] = field(default_factory=dict)
    failing_calls: dict[str, int] = field(default_factory=dict)
    output_retries_used: int = 0
    malformed_streak: int = 0  # turns in a row the model wrote something the run could not take
    empty_answers: int = 0
    final_requested: str | None = None
    note: str | None = None  # framework text to send in the next user turn (limit, validation, task)
    baseline: dict[str, float] = field(default_factory=dict)  # step/usage at the start of this run
    has_kv: bool = False
    steps: list[StepRecord] = field(default_factory=list)  # per-step records, every run of this state
    # where a durable run stood at its last checkpoint (agentkit.recovery reads these after a crash):
    # "ready" (the next model call is due), "generating" (a model call was under way; `block` holds
    # the calls it had closed and `block_results` those finished), "streamed" (the model's turn is in
    # `partial`, tools may still run), "approving" (approved calls running), "decided" (a step ended)
    phase: str = "decided"
    partial: dict[str, Any] | None = None

    @property
    def pending_calls(self) -> list[ToolCall]:
        """The calls awaiting a decision: this run's own, and its paused sub-agents' under the id
        "<call id>/<child's call id>" (nested children nest further), so one `approvals=` dict reaches all."""
        out: list[ToolCall] = []
        for i in self.pending:
            child = self.children.get(i)
            if child is None:
                out.append(self.block[i])
                continue
            parent_id = self.block[i].id
            for c in child.pending_calls:
                out.append(ToolCall(f"{parent_id}/{c.id}", c.name, dict(c.arguments), c.raw_arguments))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.small_dict(),
            "transcript": self.transcript.to_dict(),
            "messages": [message_to_dict(m) for m in self.messages],
            "tool_message_errors": [
                i for i, m in enumerate(self.messages) if m.role == "tool" and getattr(m, "is_error", False)
            ],
            "steps": [r.to_dict() for r in self.steps],
        }

    def small_dict(self) -> dict[str, Any]:
        """Everything but the three append-only parts (transcript, messages, step records), whose
        size grows with the run: a store saves those as they grow, this in full each time."""
        return {
            "version": FORMAT_VERSION,
            "run_id": self.run_id,
            "thinking": self.thinking,
            "usage": self.usage.to_dict(),
            "step": self.step,
            "status": self.status,
            "output": self.output,
            "elapsed_s": self.elapsed_s,
            "block": [c.to_dict() for c in self.block],
            "block_results": {
                str(i): [r.content, r.is_error, r.error_kind] for i, r in self.block_results.items()
            },
            "pending": list(self.pending),
            "children": {str(i): child.to_dict() for i, child in self.children.items()},
            "tool_failures": dict(self.tool_failures),
            "failing_calls": dict(self.failing_calls),
            "output_retries_used": self.output_retries_used,
            "malformed_streak": self.malformed_streak,
            "empty_answers": self.empty_answers,
            "final_requested": self.final_requested,
            "note": self.note,
            "baseline": dict(self.baseline),
            "has_kv": self.has_kv,
            "phase": self.phase,
            "partial": self.partial,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunState:
        if not isinstance(data, dict):
            raise SessionError(f"a saved run is a JSON object, got {type(data).__name__}")
        version = data.get("version")
        if version != FORMAT_VERSION:
            raise SessionError(
                f"saved run has format version {version!r}; this agentkit reads {FORMAT_VERSION}"
            )
        try:
            messages = [message_from_dict(m) for m in data["messages"]]
            for i in data.get("tool_message_errors", []):
                setattr(messages[i], "is_error", True)  # noqa: B010 - ToolMessage field, typed as Message
            return cls(
                run_id=str(data["run_id"]),
                thinking=str(data["thinking"]),
                transcript=Transcript.from_dict(data["transcript"]),
                messages=messages,
                usage=Usage.from_dict(data["usage"]),
                step=int(data["step"]),
                status=str(data["status"]),
                output=data.get("output"),
                elapsed_s=float(data.get("elapsed_s", 0.0)),
                block=[ToolCall.from_dict(c) for c in data.get("block", [])],
                block_results={
                    int(i): BlockResult(r[0], bool(r[1]), r[2])
                    for i, r in data.get("block_results", {}).items()
                },
                pending=[int(i) for i in data.get("pending", [])],
                children={int(i): RunState.from_dict(c) for i, c in data.get("children", {}).items()},
                tool_failures={str(k): int(v) for k, v in data.get("tool_failures", {}).items()},
                failing_calls={str(k): int(v) for k, v in data.get("failing_calls", {}).items()},
                output_retries_used=int(data.get("output_retries_used", 0)),
                malformed_streak=int(data.get("malformed_streak", 0)),
                empty_answers=int(data.get("empty_answers", 0)),
                final_requested=data.get("final_requested"),
                note=data.get("note"),
                baseline={str(k): float(v) for k, v in data.get("baseline", {}).items()},
                has_kv=bool(data.get("has_kv", False)),
                steps=[StepRecord.from_dict(r) for r in data.get("steps", [])],
                phase=str(data.get("phase", "decided")),
                partial=data.get("partial"),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            if isinstance(exc, SessionError):
                raise
            raise SessionError(f"saved run is malformed: {type(exc).__name__}: {exc}") from exc

    @classmethod
    def from_json(cls, text: str | bytes) -> RunState:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SessionError(f"saved run is not valid JSON: {exc}") from exc
        return cls.from_dict(data)


def save_session(path: str | Path, state: RunState, *, kv: bytes | None = None) -> Path:
    """Write `state` to `path` (JSON) and, when given, the backend's KV snapshot to `path` + ".kv".

    Written to a temporary name and renamed, so a crash mid-save never leaves a half file behind.
    """
    target = Path(path)
    state.has_kv = kv is not None
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(state.to_json(), encoding="utf-8")
    if kv is not None:
        kv_tmp = target.with_name(target.name + ".kv.tmp")
        kv_tmp.write_bytes(kv)
        kv_tmp.replace(kv_path(target))
    tmp.replace(target)
    return target


def kv_path(path: str | Path) -> Path:
    p = Path(path)
    return p.with_name(p.name + ".kv")


def load_session(path: str | Path) -> tuple[RunState, bytes | None]:
    target = Path(path)
    try:
        text = target.read_text(encoding="utf-8")
    except OSError as exc:
        raise SessionError(f"cannot read saved run {target}: {exc}") from exc
    state = RunState.from_json(text)
    kv = None
    if state.has_kv:
        try:
            kv = kv_path(target).read_bytes()
        except OSError as exc:
            raise SessionError(f"saved run {target} says it has a KV snapshot, but: {exc}") from exc
    return state, kv


__all__ = ["BlockResult", "RunState", "SessionError", "kv_path", "load_session", "save_session"]
