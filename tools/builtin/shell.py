"""`shell` and `python`: run a command or a script in the run's sandbox.

A failing command is not a tool error: its exit code and stderr are information the model needs, so
they are reported in the normal result. Only a sandbox that cannot run anything (closed, engine gone)
becomes an error outcome.
"""

from __future__ import annotations

from typing import Annotated

from agentkit.tools.context import RunContext
from agentkit.tools.sandbox.base import ExecResult, SandboxError
from agentkit.tools.tool import ToolError, tool
from pydantic import Field

__all__ = ["format_exec_result", "python", "shell"]

Seconds = Annotated[float, Field(gt=0, le=3600)]


def format_exec_result(result: ExecResult, timeout: float) -> str:
    """One text block: stdout, then stderr under a marker, then a status line the model can parse."""
    parts: list[str] = []
    if result.stdout:
        parts.append(result.stdout.rstrip("\n"))
    if result.stderr:
        parts.append("[stderr]\n" + result.stderr.rstrip("\n"))
    status = f"[exit code: {result.exit_code}]"
    if result.timed_out:
        status += f" [timed out after {timeout:g} s; the command was killed, output so far is shown]"
    if result.truncated:
        status += " [output was cut by the sandbox's output limit]"
    parts.append(status)
    return "\n".join(parts)


@tool
async def shell(ctx: RunContext[object], command: str, timeout: Seconds = 120, cwd: str | None = None) -> str:  # noqa: ASYNC109 (the model's knob)
    """Run a bash command in the sandbox and return its output and exit code.

    Each call starts a fresh shell in the workspace: `cd` and exported variables do not carry over
    to the next call, so chain commands with `&&` when they depend on each other.

    Args:
        command: The bash command line to run.
        timeout: Seconds before the command is killed (partial output is still returned).
        cwd: Directory to run in, relative to the workspace (default: the workspace itself).
    """
    sandbox = ctx.require_sandbox()
    try:
        result = await sandbox.exec(command, timeout=timeout, cwd=cwd)
    except SandboxError as exc:
        raise ToolError(f"the sandbox could not run the command: {exc}") from exc
    return format_exec_result(result, timeout)


@tool
async def python(ctx: RunContext[object], code: str, timeout: Seconds = 120) -> str:  # noqa: ASYNC109
    """Run a Python 3 program in the sandbox and return what it printed.

    The program runs as a fresh process, so variables do not persist between calls; write files to
    the workspace to keep results. Use print() to show values.

    Args:
        code: The complete Python program.
        timeout: Seconds before the program is killed (partial output is still returned).
    """
    sandbox = ctx.require_sandbox()
    try:
        # `python3 -` reads the program from stdin: no temp file, no quoting of the code.
        result = await sandbox.exec(["python3", "-"], timeout=timeout, stdin=code)
    except SandboxError as exc:
        raise ToolError(f"the sandbox could not run python: {exc}") from exc
    return format_exec_result(result, timeout)
