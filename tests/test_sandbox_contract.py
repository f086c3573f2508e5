"""The `Sandbox` protocol, checked identically on every backend (docker, bwrap, local).

A tool written against one backend must behave the same on the others; these tests are the
definition of "the same". Hypothesis draws file contents and names (a few examples: each one costs
real exec round trips).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from agentkit.tools.sandbox import ExecResult, LocalSandbox, Sandbox, SandboxError, open_sandbox
from agentkit.tools.sandbox._files import resolve_in
from agentkit.tools.sandbox._proc import CappedBuffer, normalise_exit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.anyio

BACKENDS = [
    pytest.param("docker", marks=pytest.mark.docker),
    pytest.param("bwrap", marks=pytest.mark.bwrap),
    pytest.param("local"),
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=BACKENDS)
async def sb(request: pytest.FixtureRequest) -> AsyncIterator[Sandbox]:
    async with await open_sandbox(request.param, default_timeout=60) as box:
        yield box


async def test_is_a_sandbox(sb: Sandbox) -> None:
    assert isinstance(sb, Sandbox)
    assert sb.workspace.startswith("/")


async def test_exec_basics(sb: Sandbox) -> None:
    r = await sb.exec("echo out; echo err >&2; exit 3")
    assert r == ExecResult(exit_code=3, stdout="out\n", stderr="err\n")
    argv = await sb.exec(["printf", "%s|", "a b", "$HOME", "*"])
    assert argv.stdout == "a b|$HOME|*|"  # a list is an argv: no shell expansion
    env = await sb.exec("echo $FOO", env={"FOO": "bar baz"})
    assert env.stdout == "bar baz\n"
    piped = await sb.exec("tr a-z A-Z", stdin="hello\n")
    assert piped.stdout == "HELLO\n"
    binary_in = await sb.exec(["wc", "-c"], stdin=bytes(range(256)) * 1000)
    assert binary_in.stdout.strip() == "256000"
    signalled = await sb.exec("kill -TERM $$")
    assert signalled.exit_code == 128 + 15


async def test_cwd_is_workspace_relative(sb: Sandbox) -> None:
    await sb.exec("mkdir -p sub/dir")
    r = await sb.exec("pwd", cwd="sub/dir")
    assert r.stdout.strip() == os.path.join(sb.workspace, "sub/dir")
    home = await sb.exec("pwd")
    assert home.stdout.strip() == sb.workspace
    with pytest.raises(SandboxError, match="not a directory"):
        await sb.exec("pwd", cwd="no/such/dir")


async def test_missing_program_is_a_result_not_an_error(sb: Sandbox) -> None:
    for cmd in (["agentkit-no-such-program", "x"], "agentkit-no-such-program x"):
        r = await sb.exec(cmd)
        assert r.exit_code == 127
        assert "agentkit-no-such-program" in r.stderr


async def test_large_stdin_while_output_flows(sb: Sandbox) -> None:
    # both directions bigger than any pipe buffer at once: a naive implementation deadlocks here
    data = b"x" * (3 << 20)
    r = await sb.exec("cat", stdin=data, timeout=60)
    assert r.exit_code == 0
    assert r.truncated
    assert len(r.stdout) == 1 << 20


names = st.lists(st.sampled_from(["a", "b", "deep", "ü", "x y", "dot.txt"]), min_size=1, max_size=3)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=names, data=st.binary(max_size=4096))
async def test_write_read_roundtrip(sb: Sandbox, parts: list[str], data: bytes) -> None:
    path = "/".join(["rt", *parts])
    await sb.write_file(path, data)
    assert await sb.read_file(path) == data
    assert await sb.read_file(os.path.join(sb.workspace, path)) == data
    seen = await sb.exec(["cat", path])
    assert seen.stdout == data.decode("utf-8", errors="replace")
    await sb.exec(["rm", "-rf", "rt"])


async def test_links_and_concurrent_execs(sb: Sandbox) -> None:
    await sb.write_file("real.txt", "through the link")
    await sb.exec("ln -s real.txt link.txt")
    assert await sb.read_file("link.txt") == b"through the link"
    results = await _gather(sb, [f"echo {i} > par-{i}.txt && cat par-{i}.txt" for i in range(6)])
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(6)]


async def _gather(sb: Sandbox, cmds: list[str]) -> list[ExecResult]:
    out: list[ExecResult | None] = [None] * len(cmds)

    async def one(i: int) -> None:
        out[i] = await sb.exec(cmds[i])

    async with anyio.create_task_group() as tg:
        for i in range(len(cmds)):
            tg.start_soon(one, i)
    return [r for r in out if r is not None]


async def test_text_written_is_utf8(sb: Sandbox) -> None:
    await sb.write_file("t.txt", "naïve ☃\n")
    assert await sb.read_file("t.txt") == "naïve ☃\n".encode()
    r = await sb.exec("echo more >> t.txt && cat t.txt")  # the sandbox user owns what we wrote
    assert r.stdout == "naïve ☃\nmore\n"


async def test_upload_download_tree(sb: Sandbox, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "pkg" / "sub").mkdir(parents=True)
    (src / "pkg" / "__init__.py").write_text("X = 1\n")
    (src / "pkg" / "sub" / "blob.bin").write_bytes(os.urandom(70_000))
    (src / "top.txt").write_text("top")
    await sb.upload(src, "proj")
    r = await sb.exec("python3 -c 'import pkg; print(pkg.X)' && touch made-inside", cwd="proj")
    assert r.stdout == "1\n", r.stderr
    out = tmp_path / "out"
    await sb.download("proj", out)
    for rel in ("pkg/__init__.py", "pkg/sub/blob.bin", "top.txt"):
        assert (out / rel).read_bytes() == (src / rel).read_bytes()
    assert (out / "made-inside").exists()
    single = tmp_path / "single.txt"
    await sb.download("proj/top.txt", single)
    assert single.read_text() == "top"


async def test_missing_things_are_typed_errors(sb: Sandbox, tmp_path: Path) -> None:
    # word for word the same on every backend: tool results built on it must not depend on the backend
    with pytest.raises(SandboxError, match=r"^cannot read 'does/not/exist': No such file or directory$"):
        await sb.read_file("does/not/exist")
    with pytest.raises(SandboxError):
        await sb.download("nope", tmp_path / "x")
    with pytest.raises(SandboxError):
        await sb.upload(tmp_path / "absent", "x")
    with pytest.raises(SandboxError):
        await sb.exec([])
    await sb.exec("mkdir adir")
    with pytest.raises(SandboxError):
        await sb.read_file("adir")


@pytest.mark.parametrize("backend", ["bwrap", "local"])
async def test_host_workspace_backends_confine_file_api(backend: str) -> None:
    async with await open_sandbox(backend) as box:  # type: ignore[arg-type]
        await box.exec("ln -s /etc/passwd leak; ln -s / root")
        for bad in ("../x", "/etc/passwd", "leak", "root/etc/passwd", "a/../../x"):
            with pytest.raises(SandboxError):
                await box.read_file(bad)
            with pytest.raises(SandboxError):
                await box.write_file(bad, "x")
        assert "root:x:0" in await anyio.Path("/etc/passwd").read_text()  # control: it exists on the host


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_local_runs_under_both_event_loops(anyio_backend: str) -> None:
    async with LocalSandbox() as box:
        r = await box.exec("echo $0; sleep 5", timeout=0.5)
        assert r.timed_out and r.exit_code == 124 and r.stdout.startswith("/")
        assert (await box.exec("echo ok")).stdout == "ok\n"


async def test_cancelling_an_exec_kills_its_group(tmp_path: Path) -> None:
    async with LocalSandbox() as box:
        with anyio.move_on_after(0.5):
            await box.exec("(while true; do echo t >> ticks; sleep 0.05; done) & sleep 30")
        before = await box.read_file("ticks")
        await anyio.sleep(0.3)
        assert await box.read_file("ticks") == before


@pytest.mark.parametrize("backend", ["bwrap", "local"])
async def test_close_kills_running_execs_and_forgets_finished_ones(backend: str) -> None:
    box = await open_sandbox(backend)  # type: ignore[arg-type]
    await box.exec("true")
    assert box._groups == set()  # type: ignore[attr-defined]  # finished groups are not kept
    done = anyio.Event()
    errors: list[SandboxError] = []

    async def long() -> None:
        try:
            await box.exec("sleep 60")
        except SandboxError as e:
            errors.append(e)
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(long)
        while not box._groups:  # type: ignore[attr-defined]  # noqa: ASYNC110
            await anyio.sleep(0.01)
        await box.close()
        with anyio.fail_after(30):
            await done.wait()
    assert len(errors) == 1 and "closed while the command ran" in str(errors[0])


@given(chunks=st.lists(st.binary(max_size=50), max_size=20), limit=st.integers(0, 200))
def test_capped_buffer_keeps_prefix_and_counts_rest(chunks: list[bytes], limit: int) -> None:
    buf = CappedBuffer(limit)
    for c in chunks:
        buf.feed(c)
    whole = b"".join(chunks)
    assert bytes(buf.data) == whole[:limit]
    assert buf.dropped == max(0, len(whole) - limit)


@given(st.integers(-64, 255))
def test_exit_codes_follow_the_shell(code: int) -> None:
    assert normalise_exit(code) == (128 - code if code < 0 else code)


@given(st.lists(st.sampled_from(["a", "..", ".", "", "b", "/"]), max_size=6))
def test_resolve_in_never_leaves_root(tmp_path_factory: pytest.TempPathFactory, parts: list[str]) -> None:
    root = str(tmp_path_factory.getbasetemp() / "ws")
    os.makedirs(root, exist_ok=True)
    path = "/".join(parts) or "."
    try:
        host = resolve_in(root, path, "/workspace")
    except SandboxError:
        return
    assert host == os.path.realpath(root) or host.startswith(os.path.realpath(root) + os.sep)
