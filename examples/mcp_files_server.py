"""A small filesystem MCP server, written with the official `mcp` SDK (its FastMCP-style `MCPServer`).

    python examples/mcp_files_server.py ROOT                 # stdio (what MCPServer.stdio starts)
    python examples/mcp_files_server.py ROOT --http 8000     # streamable HTTP on 127.0.0.1:8000/mcp
    python examples/mcp_files_server.py ROOT --writable      # also offer write_file

It serves one folder: every path is resolved inside ROOT and refused if it leads outside (`..`, an
absolute path, a symlink pointing away). Read-only unless --writable. `examples/mcp_agent.py` gives its
tools to an agent; any other MCP client can use it too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel

app = MCPServer("files", instructions="Files of one folder: list, search and read them.")
ROOT = Path.cwd()
MAX_FILES = 500


class Match(BaseModel):
    path: str
    line: int
    text: str


def inside(path: str) -> Path:
    """`path` (relative to ROOT) resolved, or a ToolError when it would leave ROOT."""
    target = (ROOT / path).resolve()
    if not target.is_relative_to(ROOT):
        raise ToolError(f"{path!r} is outside the served folder")
    return target


def _served(p: Path) -> bool:
    return p.resolve().is_relative_to(ROOT)  # a symlink pointing outside is not listed


def list_files(pattern: str = "**/*") -> list[str]:
    """Files under the folder matching a glob pattern, as paths relative to it.

    Args:
        pattern: A glob such as "**/*.md" (default: every file).
    """
    found = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob(pattern) if p.is_file() and _served(p))
    return found[:MAX_FILES]


def read_file(path: str, max_chars: int = 20_000) -> str:
    """The text of one file.

    Args:
        path: Path relative to the folder, as list_files gives it.
        max_chars: Read at most this many characters.
    """
    target = inside(path)
    if not target.is_file():
        raise ToolError(f"no such file: {path}")
    return target.read_text(errors="replace")[:max_chars]


def search(text: str, pattern: str = "**/*") -> list[Match]:
    """Lines containing `text` (case-insensitive) in the files matching `pattern`.

    Args:
        text: What to look for.
        pattern: Which files to search (a glob, default: all).
    """
    needle = text.lower()
    matches = []
    for rel in list_files(pattern):
        for n, line in enumerate((ROOT / rel).read_text(errors="replace").splitlines(), 1):
            if needle in line.lower():
                matches.append(Match(path=rel, line=n, text=line.strip()[:300]))
    return matches[:200]


def write_file(path: str, content: str) -> str:
    """Create or replace a file with the given text.

    Args:
        path: Path relative to the folder.
        content: The whole new text of the file.
    """
    target = inside(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(content)
    return f"wrote {len(content)} characters to {path}"


def main() -> None:
    global ROOT
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("root", type=Path)
    p.add_argument("--http", type=int, metavar="PORT", help="serve streamable HTTP on 127.0.0.1:PORT")
    p.add_argument("--writable", action="store_true", help="offer write_file too")
    args = p.parse_args()
    ROOT = args.root.resolve()
    for fn in (list_files, read_file, search):
        app.add_tool(fn)
    if args.writable:
        app.add_tool(write_file)
    if args.http:
        app.run("streamable-http", port=args.http)
    else:
        app.run()


if __name__ == "__main__":
    main()
