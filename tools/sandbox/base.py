"""The contract every sandbox backend fulfils.

Tools only ever talk to this protocol, so a tool written once runs unchanged in Docker, under
bubblewrap, or (opt-in, unsafe) directly on the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol, runtime_checkable

import anyio


@dataclass(frozen=True, slots=True)
class ExecResult:
    """Outcome of one command. Output is always returned, even partial output of a killed command.

    The same numbers on every backend, so a tool can branch on them without knowing where it ran:
    `exit_code` is 124 with `timed_out` for a command stopped by its timeout, 128+n for one ended by
    signal n (137: SIGKILL, usually the memory limit, which `stderr` then says), 127 for a program that
    does not exist. `truncated` means at least one stream passed the backend's output cap; the rest was
    read and dropped, never left to block the command.
    """

    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool = False
    truncated: bool = False


class SandboxError(RuntimeError):
    """A sandbox could not do what was asked (dead container, engine gone, escape refused)."""


class SandboxUnavailable(SandboxError):
    """No backend of the kind asked for can run on this machine (no engine, no bwrap, no image)."""


@runtime_checkable
class Sandbox(Protocol):
    """An isolated place to run commands and keep files; `workspace` is its writable root.

    `exec` runs a string through bash (a list runs as an argv, unquoted) in its own process group;
    when it ends, by exit or timeout, whatever it left in that group is killed too, so nothing from
    one tool call lingers into the next (a daemon must `setsid` itself; under bubblewrap nothing
    outlives its exec, since each exec is its own namespace).
    Relative paths and `cwd` are under `workspace`. A missing cwd, a closed or dead sandbox, or a
    path the file API will not follow out of the workspace raise SandboxError.
    """

    workspace: str

    async def exec(
        self,
        cmd: str | list[str],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the protocol: a per-command limit)
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        stdin: str | bytes | None = None,
    ) -> ExecResult: ...

    async def read_file(self, path: str) -> bytes: ...

    async def write_file(self, path: str, data: str | bytes) -> None: ...

    async def upload(self, local: Path, remote: str) -> None: ...

    async def download(self, remote: str, local: Path) -> None: ...

    async def close(self) -> None: ...

    async def __aenter__(self) -> Sandbox: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class ClosesOnExit:
    """`async with` support shared by the backends: leaving the block always closes the sandbox.

    The close is shielded so a cancelled run (Ctrl-C, a task group torn down) still removes its
    container or workspace instead of leaving it behind.
    """

    async def close(self) -> None:
        raise NotImplementedError

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with anyio.CancelScope(shield=True):
            await self.close()
