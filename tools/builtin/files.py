"""File tools: read, write, exact-string edit, list and grep, all inside the run's sandbox.

Reads number their lines so the model can talk about locations; edits match exact text (never line
numbers, which go stale after the first edit) and refuse ambiguous or missing matches with a message
that says how to fix the call. Paths are sandbox paths: relative ones are under the workspace.
"""

from __future__ import annotations

import re
from typing import Annotated

from agentkit.tools.context import RunContext
from agentkit.tools.sandbox.base import FileTooLarge, Sandbox, SandboxError
from agentkit.tools.tool import ToolError, tool
from pydantic import Field

__all__ = ["edit_file", "grep", "list_dir", "read_file", "write_file"]

MAX_LINE_CHARS = 2000
MAX_LIST_ENTRIES = 1000
MAX_GREP_LINE_CHARS = 300


async def _read(sandbox: Sandbox, path: str, *, partial: bool = False) -> bytes:
    try:
        return await sandbox.read_file(path, partial=partial)
    except SandboxError as exc:
        raise ToolError(str(exc)) from exc


async def _read_text(
    sandbox: Sandbox, path: str, *, head_ok: bool = False
) -> tuple[str, FileTooLarge | None]:
    """The file as text, or with `head_ok` the whole lines of its first read-limit bytes if it is larger
    (with the FileTooLarge that says so); a file too large to edit whole is an error otherwise."""
    data: bytes | memoryview
    try:
        data, big = await sandbox.read_file(path), None
    except FileTooLarge as exc:
        if not head_ok:
            raise ToolError(f"{exc}; it is too large to edit whole") from exc
        big = exc
        head = await _read(sandbox, path, partial=True)
        data = memoryview(head)[: head.rfind(b"\n") + 1]  # whole lines (and characters), no copy
    except SandboxError as exc:
        raise ToolError(str(exc)) from exc
    if b"\x00" in bytes(data[:8192]):
        size = big.size if big else len(data)
        raise ToolError(f"{path} is a binary file ({size} bytes); inspect it with the shell instead")
    try:
        return str(data, "utf-8"), big
    except UnicodeDecodeError as exc:
        raise ToolError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


async def _write(sandbox: Sandbox, path: str, text: str) -> None:
    try:
        await sandbox.write_file(path, text)
    except SandboxError as exc:
        raise ToolError(str(exc)) from exc


@tool
async def read_file(
    ctx: RunContext[object],
    path: str,
    offset: Annotated[int, Field(ge=1)] = 1,
    limit: Annotated[int, Field(ge=1, le=10_000)] = 2000,
) -> str:
    """Read a text file from the sandbox, with line numbers.

    Args:
        path: File path (relative to the workspace, or absolute inside the sandbox).
        offset: First line to show (1-based).
        limit: Maximum number of lines to show.
    """
    text, big = await _read_text(ctx.require_sandbox(), path, head_ok=True)
    if not text and big is None:
        return f"({path} is empty)"
    total = text.count("\n") + (not text.endswith("\n"))
    if big is not None and offset + limit - 1 > total:
        span = f"{offset},{offset + limit - 1}p"
        raise ToolError(
            f"{path} is {big.size} bytes, over the read limit; only its first {total} lines can be "
            f"read with read_file. Use the shell for the rest, e.g. sed -n '{span}' {path}"
        )
    if offset > total:
        raise ToolError(f"offset {offset} is past the end of {path} ({total} lines)")
    lines = _lines(text, offset, limit)
    end = offset - 1 + len(lines)
    width = len(str(end))
    out = []
    for n, line in enumerate(lines, start=offset):
        if len(line) > MAX_LINE_CHARS:
            line = line[:MAX_LINE_CHARS] + f" [... line cut, {len(line)} characters]"
        out.append(f"{n:>{width}}\t{line}")
    if big is not None:
        out.append(f"[lines {offset}-{end} of a {big.size}-byte file; use offset={end + 1} to read on]")
    elif end < total:
        out.append(f"[lines {offset}-{end} of {total}; use offset={end + 1} to read on]")
    elif offset > 1:
        out.append(f"[lines {offset}-{end} of {total}]")
    return "\n".join(out)


def _lines(text: str, offset: int, limit: int) -> list[str]:
    """Lines `offset`.. (1-based, at most `limit`), cut from `text` without splitting all of it.

    Lines end at "\n" (a "\r" before it is dropped), as grep -n and sed -n count them, so the line
    numbers shown agree with the shell tools a model reaches for next.
    """
    pos = 0
    for _ in range(offset - 1):
        pos = text.find("\n", pos) + 1
        if pos == 0:
            return []
    out: list[str] = []
    while len(out) < limit and pos < len(text):
        nl = text.find("\n", pos)
        nl = len(text) if nl < 0 else nl
        out.append(text[pos : nl - (nl > pos and text[nl - 1] == "\r")])
        pos = nl + 1
    return out


@tool(sequential=True)
async def write_file(ctx: RunContext[object], path: str, content: str) -> str:
    """Create or overwrite a file in the sandbox with the given content (parent folders are created).

    Args:
        path: File path (relative to the workspace, or absolute inside the sandbox).
        content: The complete new content of the file.
    """
    await _write(ctx.require_sandbox(), path, content)
    n_lines = content.count("\n") + (1 if content and not content.endswith("\n") else 0)
    return f"Wrote {len(content.encode('utf-8'))} bytes ({n_lines} lines) to {path}"


def _line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


@tool(sequential=True)
async def edit_file(
    ctx: RunContext[object], path: str, old_string: str, new_string: str, replace_all: bool = False
) -> str:
    """Replace exact text in a file. `old_string` must match exactly once unless replace_all is true.

    Copy `old_string` from the file exactly, indentation included (without the line-number prefix
    read_file shows), with enough surrounding lines to make it unique.

    Args:
        path: File to edit.
        old_string: The exact text to replace.
        new_string: The text to put in its place.
        replace_all: Replace every occurrence instead of requiring exactly one.
    """
    if not old_string:
        raise ToolError("old_string is empty; to create or overwrite a whole file use write_file")
    if old_string == new_string:
        raise ToolError("old_string and new_string are identical; nothing would change")
    sandbox = ctx.require_sandbox()
    text, _ = await _read_text(sandbox, path)
    count = text.count(old_string)
    if count == 0:
        raise ToolError(f"old_string was not found in {path}." + _near_miss_hint(text, old_string))
    if count > 1 and not replace_all:
        starts = [m.start() for m in re.finditer(re.escape(old_string), text)]
        where = ", ".join(str(_line_of(text, s)) for s in starts[:10])
        raise ToolError(
            f"old_string occurs {count} times in {path} (starting on lines {where}); include more "
            "surrounding text to make it unique, or set replace_all=true to replace every occurrence"
        )
    first = text.index(old_string)
    new_text = text.replace(old_string, new_string, -1 if replace_all else 1)
    await _write(sandbox, path, new_text)
    start_line = _line_of(new_text, first)
    end_line = start_line + new_string.count("\n")
    lines = new_text.splitlines()
    lo, hi = max(1, start_line - 2), min(len(lines), end_line + 2)
    snippet = "\n".join(f"{n:>{len(str(hi))}}\t{lines[n - 1]}" for n in range(lo, hi + 1))
    replaced = f"{count} occurrences" if replace_all and count > 1 else "1 occurrence"
    return f"Replaced {replaced} in {path}. Lines {lo}-{hi} now read:\n{snippet}"


def _near_miss_hint(text: str, needle: str) -> str:
    """Most failed edits are whitespace slips; point at the spot rather than making the model guess."""

    def squash(s: str) -> str:
        return re.sub(r"\s+", " ", s).strip()

    target = squash(needle)
    if not target:
        return ""
    lines = text.splitlines()
    span = needle.count("\n") + 1
    for i in range(len(lines)):
        if squash("\n".join(lines[i : i + span])) == target:
            return (
                f" Text matching it up to whitespace starts at line {i + 1}; copy it exactly "
                "(indentation, tabs and line breaks included)."
            )
    return " Read the file again to copy the current text exactly."


@tool
async def list_dir(
    ctx: RunContext[object],
    path: str = ".",
    depth: Annotated[int, Field(ge=1, le=5)] = 1,
    show_hidden: bool = False,
) -> str:
    """List a directory in the sandbox: folders end with '/', files show their size.

    Args:
        path: Directory to list (relative to the workspace).
        depth: How many levels deep to go (1 = only the directory's own entries).
        show_hidden: Include entries whose name starts with a dot.
    """
    argv = ["find", path, "-mindepth", "1", "-maxdepth", str(depth)]
    if not show_hidden:
        argv += ["(", "-name", ".*", "-prune", ")", "-o"]
    argv += ["-printf", "%y\t%s\t%P\t%l\n"]
    try:
        result = await ctx.require_sandbox().exec(argv, timeout=60)
    except SandboxError as exc:
        raise ToolError(str(exc)) from exc
    if result.exit_code != 0 and not result.stdout:
        raise ToolError(result.stderr.strip() or f"cannot list {path}")
    entries = []
    for row in result.stdout.splitlines():
        kind, size, name, target = [*row.split("\t"), "", "", ""][:4]
        if kind == "d":
            entries.append(f"{name}/")
        elif kind == "l":
            entries.append(f"{name} -> {target}")
        else:
            entries.append(f"{name} ({size} bytes)")
    entries.sort()
    if not entries:
        return f"{path} is empty"
    more = len(entries) - MAX_LIST_ENTRIES
    shown = entries[:MAX_LIST_ENTRIES]
    if more > 0:
        shown.append(f"[... {more} more entries; list a subdirectory or lower depth]")
    return "\n".join(shown)


@tool
async def grep(
    ctx: RunContext[object],
    pattern: str,
    path: str = ".",
    glob: str | None = None,
    ignore_case: bool = False,
    max_results: Annotated[int, Field(ge=1, le=5000)] = 200,
) -> str:
    """Search file contents with an extended regular expression; prints `file:line:text` per match.

    Args:
        pattern: Extended regular expression (grep -E syntax).
        path: File or directory to search (recursively), relative to the workspace.
        glob: Only search files whose name matches this glob, e.g. "*.py".
        ignore_case: Match without regard to case.
        max_results: Stop listing after this many matching lines.
    """
    argv = ["grep", "-rnIE", "--exclude-dir=.git"]
    if ignore_case:
        argv.append("-i")
    if glob:
        argv.append(f"--include={glob}")
    argv += ["-e", pattern, "--", path]
    try:
        result = await ctx.require_sandbox().exec(argv, timeout=120)
    except SandboxError as exc:
        raise ToolError(str(exc)) from exc
    if result.exit_code == 1 and not result.stdout:
        return f"No matches for /{pattern}/ in {path}."
    if result.exit_code not in (0, 1) and not result.stdout:
        raise ToolError(f"grep failed: {result.stderr.strip()}")
    lines = result.stdout.splitlines()
    out = [
        line if len(line) <= MAX_GREP_LINE_CHARS else line[:MAX_GREP_LINE_CHARS] + " [...]"
        for line in lines[:max_results]
    ]
    if len(lines) > max_results:
        out.append(f"[... {len(lines) - max_results} more matches; narrow the pattern, path or glob]")
    if result.exit_code not in (0, 1):
        out.append(f"[grep reported errors: {result.stderr.strip()[:500]}]")
    return "\n".join(out)
