"""A deterministic text backend that replays given DSML completions.

It exists so the loop can be driven exactly (tests, benchmarks, reproducing a bug from a recorded run)
without a model. It streams each output in fixed-size chunks with a scheduler checkpoint between them,
so tools dispatched eagerly really do run while "the model" is still producing the block.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import anyio

from agentkit.backends.base import Chunk, Finish, ModelError, ModelRequest, RawText
from agentkit.limits import Pricing

Script = str | Callable[[ModelRequest], str]


@dataclass(frozen=True, slots=True)
class PromptRecord:
    """What one call saw: the new part of the transcript, and the whole prompt when recording it."""

    step: int
    suffix: str
    prompt: str | None
    prompt_chars: int
    thinking: str
    allow_tools: bool


class ScriptedModel:
    """Replays `outputs` in order; a callable output is called with the request (for outputs that depend
    on tool results). Token counts are estimated as ceil(chars / 4), consistently for prompt and output."""

    protocol: Literal["text"] = "text"

    def __init__(
        self,
        outputs: Iterable[Script],
        *,
        chunk_size: int | None = 7,
        name: str = "scripted",
        record_prompts: bool = True,
        pricing: Pricing | None = None,
    ) -> None:
        if chunk_size is not None and chunk_size < 1:
            raise ValueError("chunk_size must be >= 1 or None")
        self.name = name
        self.pricing = pricing
        self._outputs = list(outputs)
        self._next = 0
        self.chunk_size = chunk_size
        self.record_prompts = record_prompts
        self.prompts: list[PromptRecord] = []
        self.chunks_yielded = 0
        self._seen: dict[str, tuple[int, int]] = {}  # run_id -> (epoch, chars already "cached")

    @property
    def remaining(self) -> int:
        return len(self._outputs) - self._next

    def add(self, *outputs: Script) -> None:
        self._outputs.extend(outputs)

    @staticmethod
    def tokens(chars: int) -> int:
        return math.ceil(chars / 4)

    async def stream(self, request: ModelRequest) -> AsyncIterator[Chunk]:
        if self._next >= len(self._outputs):
            raise ModelError(
                f"scripted model {self.name!r} ran out of outputs after {self._next} calls "
                f"(the run asked for one more)"
            )
        script = self._outputs[self._next]
        self._next += 1
        tr = request.transcript
        epoch, seen_chars = self._seen.get(request.run_id, (tr.epoch, 0))
        if epoch != tr.epoch or seen_chars > tr.n_chars:
            seen_chars = 0
        suffix_parts: list[str] = []
        acc = tr.n_chars
        for seg in reversed(tr.segments):
            if acc <= seen_chars:
                break
            suffix_parts.append(seg.text)
            acc -= len(seg.text)
        suffix = "".join(reversed(suffix_parts))
        self.prompts.append(
            PromptRecord(
                len(self.prompts),
                suffix,
                tr.text if self.record_prompts else None,
                tr.n_chars,
                request.thinking,
                request.allow_tools,
            )
        )
        text = script(request) if callable(script) else script
        reason = "stop"
        if request.max_tokens is not None and self.tokens(len(text)) > request.max_tokens:
            text = text[: request.max_tokens * 4]
            reason = "length"
        step = self.chunk_size or max(len(text), 1)
        for start in range(0, len(text), step):
            self.chunks_yielded += 1
            yield RawText(text[start : start + step])
            await anyio.lowlevel.checkpoint()
        prompt_tokens = self.tokens(tr.n_chars)
        cached = min(self.tokens(seen_chars), prompt_tokens)
        self._seen[request.run_id] = (tr.epoch, tr.n_chars + len(text))
        yield Finish(reason, prompt_tokens, cached, prompt_tokens - cached, self.tokens(len(text)))

    async def aclose(self) -> None:
        return None


def scripted_turn(
    reasoning: str,
    content: str = "",
    calls: Sequence[tuple[str, dict[str, Any]]] = (),
    *,
    thinking: str = "high",
) -> str:
    """One assistant turn exactly as a V4 model writes it (canonical DSML), for scripted outputs.

    Scripts built from this are "canonical" output, so a run driven by them keeps the transcript
    byte-identical to `encode_messages` of its messages. `thinking` is the agent's setting ("off" renders
    chat mode, where no reasoning is written).
    """
    from agentkit.dsml import render_assistant_turn

    msg: dict[str, Any] = {"role": "assistant", "reasoning_content": reasoning, "content": content}
    if calls:
        msg["tool_calls"] = [
            {"type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
            for name, args in calls
        ]
    return render_assistant_turn(msg, "chat" if thinking == "off" else "thinking")


__all__ = ["PromptRecord", "Script", "ScriptedModel", "scripted_turn"]
