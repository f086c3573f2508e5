"""agentkit: agents on DeepSeek-V4's DSML tool calls and interleaved thinking.

The public surface is deliberately small: an `Agent`, the `tool` decorator, a sandbox and a model string.
Names are resolved lazily so `import agentkit` stays cheap: torch is only imported when the embedded
runtime is used, Docker's SDK only when a Docker sandbox is opened.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Agent": "agentkit.agent",
    "RunResult": "agentkit.agent",
    "RunError": "agentkit.agent",
    "RunState": "agentkit.session",
    "resolve": "agentkit.backends",
    "ScriptedModel": "agentkit.backends",
    "Limits": "agentkit.limits",
    "Usage": "agentkit.limits",
    "tool": "agentkit.tools.tool",
    "Tool": "agentkit.tools.tool",
    "RunContext": "agentkit.tools.context",
    "open_sandbox": "agentkit.tools.sandbox",
    "encode_messages": "agentkit.dsml",
    "parse_completion": "agentkit.dsml",
    "StreamParser": "agentkit.dsml",
    "MCPServer": "agentkit.mcp",
}

if TYPE_CHECKING:
    from agentkit.agent import Agent, RunError, RunResult
    from agentkit.backends import ScriptedModel, resolve
    from agentkit.dsml import StreamParser, encode_messages, parse_completion
    from agentkit.limits import Limits, Usage
    from agentkit.mcp import MCPServer
    from agentkit.session import RunState
    from agentkit.tools.context import RunContext
    from agentkit.tools.sandbox import open_sandbox
    from agentkit.tools.tool import Tool, tool


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'agentkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "Agent",
    "Limits",
    "MCPServer",
    "RunContext",
    "RunError",
    "RunResult",
    "RunState",
    "ScriptedModel",
    "StreamParser",
    "Tool",
    "Usage",
    "encode_messages",
    "open_sandbox",
    "parse_completion",
    "resolve",
    "tool",
]
