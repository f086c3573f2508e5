"""The errors an MCP server raises to agentkit code (tool results carry the model-facing text)."""

from __future__ import annotations

from agentkit.mcp._connection import ConnectError

__all__ = ["MCPCallError", "MCPConnectError", "MCPToolNameError", "MCPUnavailableError"]


class MCPUnavailableError(ImportError):
    """The `mcp` SDK is not installed (`pip install 'agentkit[mcp]'`)."""


class MCPConnectError(ConnectError):
    """The server could not be started, reached, or did not complete the MCP handshake."""


class MCPCallError(RuntimeError):
    """A call failed outside the tool itself: the server ended mid-call or refused the request."""


class MCPToolNameError(ValueError):
    """Two tools of one server would have the same name, or a name or prefix is unusable."""
