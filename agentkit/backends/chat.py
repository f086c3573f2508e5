"""Chat completions (`/v1/chat/completions`): the DeepSeek API and OpenAI-compatible servers.

DeepSeek's thinking mode rejects a conversation whose assistant turns lost their `reasoning_content`
("The reasoning_content in the thinking mode must be passed back to the API"), and also rejects an empty
one on a turn that did think. So every assistant turn carries the reasoning it had, and only turns that
never had any get "". Tool calls come from the structured field; DSML that leaks into content or
reasoning is healed into calls by the loop, which sees the same chunks as for any backend.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal

from agentkit.backends._http import HTTPBackend, first_choice, usage_numbers
from agentkit.backends.base import (
    Chunk,
    ContentChunk,
    Finish,
    ModelRequest,
    ModelResponseError,
    ReasoningChunk,
    ToolCallChunk,
)
from agentkit.dsml.tokens import RESPONSE_FORMAT_TEMPLATE
from agentkit.dsml.types import to_json
from agentkit.messages import AssistantMessage, ToolMessage, message_to_dict

DEEPSEEK_BASE_URL = "https://api.deepseek.com"


class ChatModel(HTTPBackend):
    """`flavor="deepseek"` sends DeepSeek's `thinking`/`reasoning_effort` fields; `"openai"` (vLLM,
    SGLang) sends them as `chat_template_kwargs`, which those servers pass to the V4 encoder."""

    protocol: Literal["chat"] = "chat"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        flavor: Literal["deepseek", "openai"] = "openai",
        max_tokens: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(base_url, model, **kwargs)
        self.flavor = flavor
        self.name = f"deepseek:{model}" if flavor == "deepseek" else f"chat:{base_url}#{model}"
        self.default_max_tokens = max_tokens

    def wire_messages(self, request: ModelRequest) -> list[dict[str, Any]]:
        thinking = request.thinking != "off"
        out = []
        for msg in request.messages:
            d = message_to_dict(msg)
            if isinstance(msg, ToolMessage):
                d.pop("name", None)
            elif isinstance(msg, AssistantMessage) and thinking:
                d["reasoning_content"] = msg.reasoning_content or ""
            elif isinstance(msg, AssistantMessage):
                d.pop("reasoning_content", None)
            if d["role"] == "system":
                # tools travel in the request's `tools`; the output schema goes into the system text
                # exactly as the V4 encoder would write it, since chat APIs take no schema for that
                d.pop("tools", None)
                schema = d.pop("response_format", None)
                if schema is not None:
                    d["content"] += "\n\n" + RESPONSE_FORMAT_TEMPLATE.format(schema=to_json(schema))
            out.append(d)
        return out

    def payload(self, request: ModelRequest) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": self.wire_messages(request),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        max_tokens = request.max_tokens or self.default_max_tokens
        if max_tokens:
            payload["max_tokens"] = max_tokens
        if request.allow_tools and request.tools:
            payload["tools"] = request.tools
        effort = "max" if request.thinking == "max" else "high"
        if self.flavor == "deepseek":
            payload["thinking"] = {"type": "disabled" if request.thinking == "off" else "enabled"}
            if request.thinking != "off":
                payload["reasoning_effort"] = effort
        else:
            kwargs: dict[str, Any] = {"thinking": request.thinking != "off"}
            if request.thinking == "max":
                kwargs["reasoning_effort"] = "max"
            payload["chat_template_kwargs"] = kwargs
        return payload

    async def stream(self, request: ModelRequest) -> AsyncIterator[Chunk]:
        reason: str | None = None
        usage: dict[str, Any] | None = None
        async for obj in self.sse("/chat/completions", self.payload(request)):
            if obj.get("usage"):
                usage = obj["usage"]
            choice = first_choice(obj, self.root)
            if choice is None:
                continue
            delta = choice.get("delta") or {}
            if not isinstance(delta, dict):
                raise ModelResponseError(f"'delta' is not an object in a chat event from {self.root}")
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if reasoning:
                yield ReasoningChunk(str(reasoning))
            if delta.get("content"):
                yield ContentChunk(str(delta["content"]))
            for raw in delta.get("tool_calls") or []:
                if not isinstance(raw, dict) or not isinstance(raw.get("index", 0), int):
                    raise ModelResponseError(f"malformed tool_calls delta from {self.root}: {raw!r}")
                fn = raw.get("function") or {}
                yield ToolCallChunk(
                    int(raw.get("index", 0)), raw.get("id"), fn.get("name"), fn.get("arguments") or ""
                )
            if choice.get("finish_reason"):
                reason = str(choice["finish_reason"])
        if reason is None:
            raise ModelResponseError(f"chat stream from {self.root} ended without a finish_reason")
        prompt, cached, completion = usage_numbers(usage)
        yield Finish("length" if reason == "length" else "stop", prompt, cached, prompt - cached, completion)


__all__ = ["DEEPSEEK_BASE_URL", "ChatModel"]
