"""The selection chain: Docker, then bubblewrap, then a refusal; the host only when asked by name.

Unavailability is produced for real, not mocked: an engine address nobody listens on, and a PATH
without bwrap.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from agentkit.tools.sandbox import (
    BwrapSandbox,
    DockerSandbox,
    LocalSandbox,
    SandboxError,
    SandboxPool,
    SandboxUnavailable,
    open_sandbox,
    select,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def no_docker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/agentkit-test/docker.sock")


@pytest.fixture
def no_bwrap(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: neither bwrap nor prlimit


@pytest.mark.docker
async def test_auto_prefers_docker() -> None:
    async with await open_sandbox() as sb:
        assert isinstance(sb, DockerSandbox)
        assert (await sb.exec("echo ok")).stdout == "ok\n"


@pytest.mark.bwrap
async def test_auto_falls_back_to_bwrap_without_engine_and_says_so_once(
    no_docker: None, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(select, "_noted_fallback", [])  # as in a fresh process
    caplog.set_level(logging.DEBUG, "agentkit.sandbox")
    async with await open_sandbox("auto", pids=100, memory_mb=512) as sb:
        assert isinstance(sb, BwrapSandbox)
        assert sb.config.pids == 100 and sb.config.memory_mb == 512
        assert (await sb.exec("echo ok")).stdout == "ok\n"
    async with await open_sandbox("auto") as sb2:
        assert isinstance(sb2, BwrapSandbox)
    notes = [r for r in caplog.records if "using bubblewrap, not Docker" in r.getMessage()]
    # the downgrade is never silent, said once per process, at INFO (the expected path without
    # Docker), and its advice fits what happened: it does not tell the user to use bwrap "instead"
    assert len(notes) == 1 and notes[0].levelno == logging.INFO, caplog.text
    assert "no Docker engine" in notes[0].getMessage() and "--sandbox bwrap" in notes[0].getMessage()
    assert "start dockerd or use bwrap" not in notes[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "Docker" in r.getMessage()]


@pytest.mark.bwrap
async def test_auto_keeps_docker_only_options_on_docker() -> None:
    # a docker-only option pins the choice to docker: it must not be silently dropped for bwrap
    with pytest.raises(SandboxUnavailable, match=r"docker: sandbox image .* is not present"):
        await open_sandbox("auto", image="agentkit-no-such-image:never")


async def test_auto_refuses_when_nothing_isolates(no_docker: None, no_bwrap: None) -> None:
    with pytest.raises(SandboxUnavailable) as info:
        await open_sandbox()
    msg = str(info.value)
    assert "docker:" in msg and "bwrap:" in msg and "backend='local'" in msg


async def test_named_backends_fail_loudly(no_docker: None, no_bwrap: None) -> None:
    with pytest.raises(SandboxUnavailable, match="no Docker engine"):
        await open_sandbox("docker")
    with pytest.raises(SandboxUnavailable, match="bwrap"):
        await open_sandbox("bwrap")


async def test_local_only_by_name(no_docker: None, no_bwrap: None) -> None:
    async with await open_sandbox("local") as sb:
        assert isinstance(sb, LocalSandbox)


async def test_bad_requests_are_typed() -> None:
    with pytest.raises(ValueError, match="unknown sandbox backend"):
        await open_sandbox("podman")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="memroy"):
        await open_sandbox("auto", memroy=5)
    with pytest.raises(TypeError, match="image"):
        await open_sandbox("bwrap", image="x")
    with pytest.raises(TypeError, match="pids"):
        await open_sandbox("local", pids=3)
    assert issubclass(SandboxUnavailable, SandboxError)


@pytest.mark.docker
async def test_pool_feeds_open_sandbox() -> None:
    async with SandboxPool(size=1, pids=99) as pool:
        await pool.wait_ready()
        async with await open_sandbox(pool=pool) as sb:
            assert isinstance(sb, DockerSandbox) and sb.config.pids == 99
            assert pool.stats["warm"] == 1
            assert (await sb.exec("echo ok")).stdout == "ok\n"
        with pytest.raises(ValueError, match="holds Docker"):
            await open_sandbox("bwrap", pool=pool)
        with pytest.raises(TypeError, match="configure the pool"):
            await open_sandbox(pool=pool, pids=5)
