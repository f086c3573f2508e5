"""Built-in tools against real sandbox backends (host subprocess and a real Docker container).

Each backend is started once per module; every test works in its own subdirectory so tests stay
independent while the suite pays for one container start.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from agentkit.tools.builtin import (
    builtin_tools,
    edit_file,
    grep,
    list_dir,
    python,
    read_file,
    shell,
    write_file,
)
from agentkit.tools.context import RunContext
from agentkit.tools.sandbox import open_sandbox
from agentkit.tools.sandbox.base import Sandbox
from agentkit.tools.sandbox.docker import DockerSandbox
from agentkit.tools.tool import ToolOutcome
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.anyio

BACKENDS = [
    "local",
    pytest.param("docker", marks=pytest.mark.docker),
    pytest.param("bwrap", marks=pytest.mark.bwrap),
]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module", params=BACKENDS)
async def sandbox(request: pytest.FixtureRequest, anyio_backend: str) -> AsyncIterator[Sandbox]:
    async with await open_sandbox(backend=request.param) as sb:
        yield sb


@pytest.fixture
async def ctx(sandbox: Sandbox) -> RunContext[None]:
    """A context whose `d` extra is a fresh directory, relative to the workspace."""
    d = f"t-{uuid.uuid4().hex[:8]}"
    await sandbox.exec(["mkdir", "-p", d])
    return RunContext(sandbox=sandbox, extra={"d": d})


async def call(t: Any, ctx: RunContext[None], **args: Any) -> ToolOutcome:
    return await t.invoke(args, ctx)


async def test_builtin_tools_list_and_schemas() -> None:
    tools = builtin_tools()
    assert [t.name for t in tools] == [
        "shell",
        "python",
        "read_file",
        "write_file",
        "edit_file",
        "list_dir",
        "grep",
    ]
    for t in tools:
        fn = t.openai_schema()["function"]
        assert fn["description"] and "ctx" not in fn["parameters"]["properties"]
        assert all(p.get("description") for p in fn["parameters"]["properties"].values()), t.name
    assert write_file.sequential and edit_file.sequential and not read_file.sequential


async def test_shell_reports_output_stderr_and_exit_code(ctx: RunContext[None]) -> None:
    d = ctx.extra["d"]
    out = await call(shell, ctx, command="echo hello; echo oops >&2; exit 3", cwd=d)
    assert not out.is_error
    assert out.content == "hello\n[stderr]\noops\n[exit code: 3]"
    out = await call(shell, ctx, command="pwd", cwd=d)
    assert out.content.splitlines()[0].endswith("/" + d)


async def test_shell_timeout_returns_partial_output(ctx: RunContext[None]) -> None:
    out = await call(shell, ctx, command="echo started; sleep 20; echo never", timeout=0.5)
    assert not out.is_error
    assert out.content.startswith("started\n")
    assert "timed out after 0.5 s" in out.content and "never" not in out.content


async def test_shell_rejects_bad_timeout_before_running(ctx: RunContext[None]) -> None:
    out = await call(shell, ctx, command="true", timeout=-1)
    assert out.error_kind == "validation" and "`timeout`" in out.content


async def test_python_runs_code_from_stdin(ctx: RunContext[None]) -> None:
    code = "import sys\nprint(sum(range(10)))\nprint('quote \"and\" $dollar')\nsys.exit(0)\n"
    out = await call(python, ctx, code=code)
    assert out.content == '45\nquote "and" $dollar\n[exit code: 0]'
    out = await call(python, ctx, code="raise ValueError('bad')")
    assert "ValueError: bad" in out.content and out.content.endswith("[exit code: 1]")


async def test_write_then_read_with_line_numbers(ctx: RunContext[None]) -> None:
    path = f"{ctx.extra['d']}/sub/notes.txt"
    body = "".join(f"line {i}\n" for i in range(1, 13))
    out = await call(write_file, ctx, path=path, content=body)
    assert out.content == f"Wrote {len(body)} bytes (12 lines) to {path}"
    out = await call(read_file, ctx, path=path)
    assert out.content.splitlines()[0] == " 1\tline 1"
    assert out.content.splitlines()[-1] == "12\tline 12"
    out = await call(read_file, ctx, path=path, offset=3, limit=2)
    assert out.content == "3\tline 3\n4\tline 4\n[lines 3-4 of 12; use offset=5 to read on]"
    out = await call(read_file, ctx, path=path, offset=99)
    assert out.error_kind == "error" and "past the end" in out.content


async def test_read_errors_are_clear(ctx: RunContext[None], sandbox: Sandbox) -> None:
    d = ctx.extra["d"]
    out = await call(read_file, ctx, path=f"{d}/missing.txt")
    assert out.error_kind == "error" and "missing.txt" in out.content
    await sandbox.write_file(f"{d}/blob.bin", b"\x00\x01\x02")
    out = await call(read_file, ctx, path=f"{d}/blob.bin")
    assert out.error_kind == "error" and "binary file" in out.content
    out = await call(read_file, ctx, path="../../etc/passwd")
    if isinstance(sandbox, DockerSandbox):  # inside a container, /etc/passwd is the container's own
        assert "agentkit sandbox" in out.content
    else:  # a host directory workspace (local, bwrap): the file API's confinement must refuse it
        assert out.error_kind == "error" and "outside the sandbox workspace" in out.content


async def test_edit_file_exact_unique_replacement(ctx: RunContext[None], sandbox: Sandbox) -> None:
    path = f"{ctx.extra['d']}/app.py"
    await sandbox.write_file(path, "def f():\n    return 1\n\n\ndef g():\n    return 1\n")
    out = await call(edit_file, ctx, path=path, old_string="    return 1\n", new_string="    return 2\n")
    assert out.error_kind == "error"
    assert "occurs 2 times" in out.content and "lines 2, 6" in out.content
    assert (await sandbox.read_file(path)).decode().count("return 1") == 2  # nothing changed

    out = await call(
        edit_file, ctx, path=path, old_string="def g():\n    return 1", new_string="def g():\n    return 2"
    )
    assert not out.is_error and out.content.startswith(f"Replaced 1 occurrence in {path}.")
    assert (await sandbox.read_file(path)).decode() == "def f():\n    return 1\n\n\ndef g():\n    return 2\n"

    out = await call(edit_file, ctx, path=path, old_string="return", new_string="yield", replace_all=True)
    assert "Replaced 2 occurrences" in out.content
    assert (await sandbox.read_file(path)).decode().count("yield") == 2


async def test_edit_file_missing_match_points_at_whitespace_slip(
    ctx: RunContext[None], sandbox: Sandbox
) -> None:
    path = f"{ctx.extra['d']}/w.py"
    await sandbox.write_file(path, "x = 1\nif x:\n\tprint(x)\n")
    out = await call(edit_file, ctx, path=path, old_string="if x:\n    print(x)", new_string="pass")
    assert out.error_kind == "error"
    assert "not found" in out.content and "starts at line 2" in out.content
    out = await call(edit_file, ctx, path=path, old_string="absent", new_string="x")
    assert "not found" in out.content and "Read the file again" in out.content
    out = await call(edit_file, ctx, path=path, old_string="", new_string="x")
    assert "write_file" in out.content
    assert (await sandbox.read_file(path)).decode() == "x = 1\nif x:\n\tprint(x)\n"


async def test_list_dir(ctx: RunContext[None], sandbox: Sandbox) -> None:
    d = ctx.extra["d"]
    await sandbox.write_file(f"{d}/a.txt", "hello")
    await sandbox.write_file(f"{d}/pkg/mod.py", "")
    await sandbox.write_file(f"{d}/.hidden", "x")
    out = await call(list_dir, ctx, path=d)
    assert out.content.splitlines() == ["a.txt (5 bytes)", "pkg/"]
    out = await call(list_dir, ctx, path=d, depth=2, show_hidden=True)
    assert out.content.splitlines() == [
        ".hidden (1 bytes)",
        "a.txt (5 bytes)",
        "pkg/",
        "pkg/mod.py (0 bytes)",
    ]
    out = await call(list_dir, ctx, path=f"{d}/nope")
    assert out.error_kind == "error" and "nope" in out.content


async def test_grep(ctx: RunContext[None], sandbox: Sandbox) -> None:
    d = ctx.extra["d"]
    await sandbox.write_file(f"{d}/a.py", "import os\nTODO = 1\n")
    await sandbox.write_file(f"{d}/b.txt", "todo: write tests\n")
    out = await call(grep, ctx, pattern="TODO", path=d)
    assert out.content == f"{d}/a.py:2:TODO = 1"
    out = await call(grep, ctx, pattern="todo", path=d, ignore_case=True)
    assert sorted(out.content.splitlines()) == [f"{d}/a.py:2:TODO = 1", f"{d}/b.txt:1:todo: write tests"]
    out = await call(grep, ctx, pattern="todo", path=d, ignore_case=True, glob="*.txt")
    assert out.content == f"{d}/b.txt:1:todo: write tests"
    out = await call(grep, ctx, pattern="nothing-here", path=d)
    assert out.content == f"No matches for /nothing-here/ in {d}." and not out.is_error
    out = await call(grep, ctx, pattern="(unclosed", path=d)
    assert out.error_kind == "error" and "grep failed" in out.content
    await sandbox.write_file(f"{d}/many.txt", "hit\n" * 30)
    out = await call(grep, ctx, pattern="hit", path=f"{d}/many.txt", max_results=5)
    assert out.content.splitlines()[-1] == "[... 25 more matches; narrow the pattern, path or glob]"


async def test_tools_without_a_sandbox_fail_clearly() -> None:
    out = await read_file.invoke({"path": "x"}, RunContext())
    assert out.is_error and "needs a sandbox" in out.content


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=st.text(alphabet="ab \n", max_size=30),
    old=st.text(alphabet="ab \n", min_size=1, max_size=3),
    new=st.text(alphabet="abc\n", max_size=3),
    replace_all=st.booleans(),
)
async def test_edit_file_contract(text: str, old: str, new: str, replace_all: bool) -> None:
    """Exactly one match (or replace_all with >= 1) edits like str.replace; anything else changes nothing."""
    async with await open_sandbox(backend="local") as sb:
        await sb.write_file("f.txt", text)
        out = await edit_file.invoke(
            {"path": "f.txt", "old_string": old, "new_string": new, "replace_all": replace_all},
            RunContext(sandbox=sb),
        )
        after = (await sb.read_file("f.txt")).decode()
    count = text.count(old)
    if old == new:
        assert out.error_kind == "error" and after == text
    elif count == 1 or (replace_all and count > 1):
        assert not out.is_error, out.content
        assert after == text.replace(old, new, -1 if replace_all else 1)
    else:
        assert out.error_kind == "error" and after == text
        assert ("not found" in out.content) if count == 0 else (f"occurs {count} times" in out.content)
