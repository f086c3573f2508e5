"""Built-in tools: shell, python and file tools (all through `ctx.sandbox`), and the browser.

The browser lives in `agentkit.tools.builtin.browser` and is not imported here, so using the
file tools never loads Playwright.
"""

from __future__ import annotations

from agentkit.tools.tool import Tool

from .files import edit_file, grep, list_dir, read_file, write_file
from .shell import python, shell

__all__ = ["builtin_tools", "edit_file", "grep", "list_dir", "python", "read_file", "shell", "write_file"]


def builtin_tools() -> list[Tool]:
    """The sandbox tools a coding agent needs, in the order they are shown to the model."""
    return [shell, python, read_file, write_file, edit_file, list_dir, grep]
