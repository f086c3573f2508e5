"""A user's folder as the sandbox's /workspace (`host_workspace`), on both isolating backends, for real.

Read-only by default: the sandboxed code reads the user's files, and neither its commands nor the file API
can change them. `workspace_writable=True`: its writes land in the user's folder as the folder owner's
files. A folder owned by root is never mounted writable (the sandbox never runs as root).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from agentkit.tools.sandbox import SandboxError, open_sandbox

pytestmark = pytest.mark.anyio

BACKENDS = [pytest.param("docker", marks=pytest.mark.docker), pytest.param("bwrap", marks=pytest.mark.bwrap)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """pytest's folder lies under a 0700 one; a user's project lies where its owner can reach it."""
    d = Path(tempfile.mkdtemp(prefix="agentkit-ws-test-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _folder(tmp_path: Path, owner: int | None) -> Path:
    d = tmp_path / "project"
    (d / "sub").mkdir(parents=True)
    (d / "README.md").write_text("hello from the user\n")
    (d / "sub" / "data.txt").write_text("42\n")
    if owner is not None:
        for p in (d, d / "sub", d / "README.md", d / "sub" / "data.txt"):
            os.chown(p, owner, owner)
    return d


@pytest.mark.parametrize("backend", BACKENDS)
async def test_read_only_by_default(backend: str, tmp_path: Path) -> None:
    d = _folder(tmp_path, None)
    async with await open_sandbox(backend, host_workspace=str(d)) as sb:  # type: ignore[arg-type]
        r = await sb.exec("cat README.md sub/data.txt && pwd")
        assert r.stdout == "hello from the user\n42\n/workspace\n", r
        assert (await sb.read_file("sub/data.txt")) == b"42\n"
        w = await sb.exec("echo changed > README.md; echo new > new.txt")
        assert w.exit_code != 0 and "Read-only file system" in w.stderr, w
        with pytest.raises(SandboxError, match="read-only"):
            await sb.write_file("README.md", "changed by the file API")
    assert (d / "README.md").read_text() == "hello from the user\n"
    assert sorted(p.name for p in d.iterdir()) == ["README.md", "sub"]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_writable_writes_land_in_the_folder_as_its_owner(backend: str, tmp_path: Path) -> None:
    owner = 4242
    d = _folder(tmp_path, owner)
    opts = {"host_workspace": str(d), "workspace_writable": True}
    async with await open_sandbox(backend, **opts) as sb:  # type: ignore[arg-type]
        r = await sb.exec("echo made > made.txt && id -u && cat README.md")
        assert r.exit_code == 0 and r.stdout.endswith("hello from the user\n"), r
        assert r.stdout.split()[0] != "0"  # never root inside
        await sb.write_file("sub/api.txt", "via the file API\n")
    assert (d / "made.txt").read_text() == "made\n"
    assert (d / "sub" / "api.txt").read_text() == "via the file API\n"
    assert (d / "made.txt").stat().st_uid == owner and (d / "sub" / "api.txt").stat().st_uid == owner
    assert d.exists() and (d / "README.md").exists()  # closing the sandbox never removes the user's folder


@pytest.mark.parametrize("backend", [*BACKENDS, "local"])
async def test_refusals_are_clear(backend: str, tmp_path: Path) -> None:
    d = _folder(tmp_path, None)  # owned by root (the tests run as root)
    if backend == "local":
        with pytest.raises(SandboxError, match="cannot mount a folder read-only"):
            await open_sandbox("local", host_workspace=str(d))
        return
    with pytest.raises(SandboxError, match="belongs to root"):
        await open_sandbox(backend, host_workspace=str(d), workspace_writable=True)  # type: ignore[arg-type]
    with pytest.raises(SandboxError, match="not a directory"):
        await open_sandbox(backend, host_workspace=str(tmp_path / "missing"))  # type: ignore[arg-type]
    if backend == "bwrap":  # a folder its user cannot reach is named, with the folder in the way
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o700)
        (locked / "inner").mkdir()
        with pytest.raises(SandboxError, match=r"cannot reach .*locked is not searchable"):
            await open_sandbox("bwrap", host_workspace=str(locked / "inner"))
