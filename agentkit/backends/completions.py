"""Raw `/v1/completions` against a server hosting V4 (vLLM, SGLang).

The framework sends its own prompt text, so the server sees exactly the transcript the loop keeps and its
prefix cache hits on the whole old part of every turn. Special tokens must come back as text
(`skip_special_tokens=false`), otherwise `</think>` and `｜DSML｜` would vanish from the output.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal

from agentkit.backends._http import HTTPBackend, first_choice, usage_numbers
from agentkit.backends.base import Chunk, Finish, ModelRequest, ModelResponseError, RawText


class CompletionsModel(HTTPBackend):
    protocol: Literal["text"] = "text"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        max_tokens: int = 8192,
        temperature: float | None = None,
        top_p: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(base_url, model, **kwargs)
        self.name = f"completions:{base_url}#{model}"
        self.default_max_tokens = max_tokens
        self.temperature = temperature
        self.top_p = top_p

    async def stream(self, request: ModelRequest) -> AsyncIterator[Chunk]:
        payload: dict[str, Any] = {
            "model": self.model,
            "prompt": request.transcript.text,
            "stream": True,
            "max_tokens": request.max_tokens or self.default_max_tokens,
            "skip_special_tokens": False,
            "spaces_between_special_tokens": False,
            "stream_options": {"include_usage": True},
        }
        if self.temperature is not None:
            payload["temperature"] = self.temperature
        if self.top_p is not None:
            payload["top_p"] = self.top_p
        reason: str | None = None
        usage: dict[str, Any] | None = None
        async for obj in self.sse("/completions", payload):
            if obj.get("usage"):
                usage = obj["usage"]
            choice = first_choice(obj, self.root)
            if choice is None:
                continue
            text = choice.get("text")
            if text is not None and not isinstance(text, str):
                raise ModelResponseError(f"'text' is not a string in a completions event from {self.root}")
            if text:
                yield RawText(text)
            if choice.get("finish_reason"):
                reason = str(choice["finish_reason"])
        if reason is None:
            raise ModelResponseError(f"completions stream from {self.root} ended without a finish_reason")
        prompt, cached, completion = usage_numbers(usage)
        yield Finish("length" if reason == "length" else "stop", prompt, cached, prompt - cached, completion)


__all__ = ["CompletionsModel"]
