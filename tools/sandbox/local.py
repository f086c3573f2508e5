"""`LocalSandbox`: commands run directly on the host, in a private temp directory. NOT isolation.

It exists for development and for machines with neither Docker nor bubblewrap, and is only ever chosen
when asked for by name. It keeps the same semantics as the real backends (process group per exec, group
killed on timeout, partial output, output cap) so code written against it behaves the same elsewhere.
The file API is confined to the workspace; `exec` is not confined at all.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from pathlib import Path

import anyio

from . import _proc
from ._files import Tree, resolve_in
from .base import DEFAULT_READ_LIMIT, ClosesOnExit, ExecResult, SandboxError


class LocalSandbox(ClosesOnExit):
    """A host temp dir plus host subprocesses; the workspace is deleted on close."""

    def __init__(
        self,
        *,
        default_timeout: float = _proc.DEFAULT_TIMEOUT_S,
        output_limit: int = _proc.DEFAULT_OUTPUT_LIMIT,
        env: dict[str, str] | None = None,
        workspace_parent: str | None = None,
        read_limit: int = DEFAULT_READ_LIMIT,
        workspace: str | None = None,
    ) -> None:
        # `workspace`: an existing folder to work in, kept on close (it is the caller's)
        self._owned = workspace is None
        if workspace is not None and not os.path.isdir(workspace):
            raise SandboxError(f"workspace {workspace!r} is not a directory")
        self.workspace = os.path.realpath(
            workspace or tempfile.mkdtemp(prefix="agentkit-local-", dir=workspace_parent)
        )
        self.default_timeout = default_timeout
        self.output_limit = output_limit
        self.read_limit = read_limit
        self._tree = Tree(self.workspace, self.workspace)
        self._env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": self.workspace,
            "LANG": "C.UTF-8",
            "TMPDIR": self.workspace,
            **(env or {}),
        }
        self._groups: set[int] = set()
        self._closed = False

    def _check(self) -> None:
        if self._closed:
            raise SandboxError("sandbox is closed")

    def _host(self, path: str) -> str:
        return resolve_in(self.workspace, path, self.workspace)

    async def exec(
        self,
        cmd: str | list[str],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the protocol: a per-command limit)
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        stdin: str | bytes | None = None,
    ) -> ExecResult:
        self._check()
        workdir = self._host(cwd) if cwd is not None else self.workspace
        if not await anyio.Path(workdir).is_dir():
            raise SandboxError(f"cwd {cwd!r} is not a directory in the sandbox")
        result = await _proc.run_process(
            _proc.shell_argv(cmd, shutil.which("bash") or "/bin/sh"),
            timeout_s=self.default_timeout if timeout is None else timeout,
            cwd=workdir,
            env={**self._env, **(env or {})},
            stdin=_proc.stdin_bytes(stdin),
            output_limit=self.output_limit,
            memory_hint="host's memory (LocalSandbox sets no memory limit)",
            started=self._groups,
            missing_is_result=True,
        )
        if self._closed:
            raise SandboxError("sandbox was closed while the command ran")
        return result

    async def read_file(self, path: str, *, max_bytes: int | None = None, partial: bool = False) -> bytes:
        self._check()
        limit = self.read_limit if max_bytes is None else max_bytes
        read = functools.partial(self._tree.read, path, limit, partial=partial)
        return await anyio.to_thread.run_sync(read, abandon_on_cancel=True)

    async def write_file(self, path: str, data: str | bytes) -> None:
        self._check()
        raw = data.encode("utf-8") if isinstance(data, str) else data
        await anyio.to_thread.run_sync(self._tree.write, path, raw)

    async def upload(self, local: Path, remote: str) -> None:
        self._check()
        await anyio.to_thread.run_sync(self._tree.copy_in, Path(local), remote)

    async def download(self, remote: str, local: Path) -> None:
        self._check()
        await anyio.to_thread.run_sync(self._tree.copy_out, remote, Path(local))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for pgid in self._groups:
            _proc._killpg(pgid)
        if self._owned:
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(self.workspace, ignore_errors=True))

    async def __aenter__(self) -> LocalSandbox:
        return self
