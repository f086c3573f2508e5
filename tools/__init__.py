"""Typed tools and sandboxes (imported as `agentkit.tools`)."""

from agentkit.tools.context import RunContext
from agentkit.tools.tool import Tool, ToolError, ToolOutcome, tool

__all__ = ["RunContext", "Tool", "ToolError", "ToolOutcome", "tool"]
