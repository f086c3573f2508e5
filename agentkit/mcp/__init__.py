"""MCP client: an MCP server's tools as agentkit tools (`Agent(tools=[..., MCPServer.stdio(...)])`).

Importing this package is cheap; the `mcp` SDK itself is imported when a server is first used.
"""

from agentkit.mcp.errors import MCPCallError, MCPConnectError, MCPToolNameError, MCPUnavailableError
from agentkit.mcp.server import MCPServer
from agentkit.mcp.tool import MCPTool

__all__ = [
    "MCPCallError",
    "MCPConnectError",
    "MCPServer",
    "MCPTool",
    "MCPToolNameError",
    "MCPUnavailableError",
]
