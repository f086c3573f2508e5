"""`agentkit serve`: the embedded runtime's engine behind an OpenAI-compatible HTTP API.

    from agentkit.runtime import Engine
    from agentkit.serve import app
    asgi = app(Engine.load("tiny"))          # mount it, or: uvicorn.run(asgi, port=8000)

Endpoints: GET /v1/models, POST /v1/chat/completions (tools, tool_choice, reasoning_content, the three V4
modes, streaming), POST /v1/completions (a raw prompt or token ids, token-exact). Needs the `server`
extra (starlette, uvicorn, jsonschema); the names below import on first use, so the CLI can register the
command without loading any of it.

Modules: requests (validating bodies into typed requests), errors (OpenAI-shaped errors), generation
(one request on the engine; finished conversations' states kept for the next turn), chat (DSML encoder
in, DSML stream parser out), completions (raw text / ids), server (routes, auth, event streams, `serve`),
command (the CLI's arguments).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentkit.serve.errors import APIError
    from agentkit.serve.generation import Defaults
    from agentkit.serve.server import app, serve

_LAZY = {
    "APIError": "agentkit.serve.errors",
    "Defaults": "agentkit.serve.generation",
    "app": "agentkit.serve.server",
    "serve": "agentkit.serve.server",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'agentkit.serve' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = ["APIError", "Defaults", "app", "serve"]
