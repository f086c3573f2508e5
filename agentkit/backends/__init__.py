"""Model backends behind one protocol, selected by a string.

`resolve("completions:http://127.0.0.1:8000#deepseek-v4")`, `resolve("chat:<base_url>#<model>")`,
`resolve("deepseek:deepseek-v4-flash")`, `resolve("embedded:tiny")`, an `agentkit.runtime.Engine` (the
embedded backend on that engine), or pass any object that already speaks the `Model` protocol (e.g. a
`ScriptedModel`).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from agentkit.backends.base import (
    Chunk,
    ContentChunk,
    Finish,
    Model,
    ModelAuthError,
    ModelError,
    ModelHTTPError,
    ModelRequest,
    ModelResponseError,
    RawText,
    ReasoningChunk,
    ThinkingMode,
    ToolCallChunk,
)
from agentkit.backends.scripted import ScriptedModel

if TYPE_CHECKING:
    from agentkit.runtime.engine import Engine

KINDS = ("scripted", "completions", "chat", "deepseek", "embedded")
_LAZY = {
    "CompletionsModel": "agentkit.backends.completions",
    "ChatModel": "agentkit.backends.chat",
    "EmbeddedModel": "agentkit.backends.embedded",
}


def __getattr__(name: str) -> Any:
    """Backends import on first use, so `import agentkit.backends` never pulls in httpx or torch."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'agentkit.backends' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def _split_url_model(kind: str, rest: str) -> tuple[str, str]:
    url, sep, model = rest.rpartition("#")
    if not sep or not url or not model:
        raise ValueError(f"model spec must look like '{kind}:<base_url>#<model>', got '{kind}:{rest}'")
    return url, model


def resolve(spec: str | Model | Engine, **kwargs: Any) -> Model:
    """Turn a model string into a backend; keyword arguments go to the backend's constructor.

    A bare path to a checkpoint directory (one holding config.json) means `embedded:<path>`, so
    `agentkit run --model ./my-checkpoint` works without knowing the spec syntax. An `Engine` becomes the
    embedded backend on it (its tokenizer: the engine's own, or `tokenizer=...`).
    """
    if not isinstance(spec, str):
        engines = sys.modules.get("agentkit.runtime.engine")  # an Engine exists only once that is imported
        if engines is not None and isinstance(spec, engines.Engine):
            from agentkit.backends.embedded import EmbeddedModel

            return EmbeddedModel(engine=spec, **kwargs)
        if isinstance(spec, Model):
            return spec
        raise TypeError(f"expected a model spec string, a Model or an Engine, got {type(spec).__name__}")
    if ":" not in spec:
        from pathlib import Path

        if (Path(spec) / "config.json").is_file():
            spec = f"embedded:{spec}"
    kind, sep, rest = spec.partition(":")
    if kind == "scripted":
        import json
        from pathlib import Path

        if not rest:
            return ScriptedModel(kwargs.pop("outputs", []), **kwargs)
        outputs = json.loads(Path(rest).read_text(encoding="utf-8"))
        if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
            raise ValueError(f"scripted:{rest} must hold a JSON list of completion strings")
        return ScriptedModel(outputs, **kwargs)
    if not sep or not rest:
        raise ValueError(f"model spec {spec!r} must be '<kind>:<target>' with kind one of {KINDS}")
    if kind == "completions":
        from agentkit.backends.completions import CompletionsModel

        url, model = _split_url_model(kind, rest)
        return CompletionsModel(url, model, **kwargs)
    if kind == "chat":
        from agentkit.backends.chat import ChatModel

        url, model = _split_url_model(kind, rest)
        return ChatModel(url, model, flavor="openai", **kwargs)
    if kind == "deepseek":
        from agentkit.backends.chat import DEEPSEEK_BASE_URL, ChatModel

        kwargs.setdefault("api_key_env", "DEEPSEEK_API_KEY")
        kwargs.setdefault("require_key", True)
        base = kwargs.pop("base_url", DEEPSEEK_BASE_URL)
        return ChatModel(base, rest, flavor="deepseek", **kwargs)
    if kind == "embedded":
        from agentkit.backends.embedded import EmbeddedModel

        return EmbeddedModel(rest, **kwargs)
    raise ValueError(f"unknown model kind {kind!r} in {spec!r}; expected one of {KINDS}")


__all__ = [
    "KINDS",
    "ChatModel",
    "Chunk",
    "CompletionsModel",
    "ContentChunk",
    "EmbeddedModel",
    "Finish",
    "Model",
    "ModelAuthError",
    "ModelError",
    "ModelHTTPError",
    "ModelRequest",
    "ModelResponseError",
    "RawText",
    "ReasoningChunk",
    "ScriptedModel",
    "ThinkingMode",
    "ToolCallChunk",
    "resolve",
]
