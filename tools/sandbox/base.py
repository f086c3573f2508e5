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


#: Default cap on one `read_file`: enough for any source file a model should read whole, small enough
#: that parallel reads of hostile multi-GB files cannot balloon the host process.
DEFAULT_READ_LIMIT = 8 << 20


class FileTooLarge(SandboxError):
    """A file holds more bytes than the read cap allows; nothing beyond the cap was read."""

    def __init__(self, path: str, size: int, limit: int) -> None:
        super().__init__(
            f"cannot read {path!r}: it is {_size(size)}, over the read limit of {_size(limit)} "
            "(read part of it with partial=True, or with shell tools such as head, tail, sed -n)"
        )
        self.path, self.size, self.limit = path, size, limit


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} bytes"


@runtime_checkable
class Sandbox(Protocol):
    """An isolated place to run commands and keep files; `workspace` is its writable root.

    `exec` runs a string through bash (a list runs as an argv, unquoted). When it ends, by exit,
    timeout or cancellation, every process it started is killed: its whole process tree, including
    children that called `setsid` or double-forked (bubblewrap: each exec is its own PID namespace;
    Docker: each exec runs under its own subreaping init, whose tree is stopped and killed). Nothing
    from one tool call lingers into the next. (LocalSandbox, which isolates nothing, kills the
    process group only.)

    The file API never lets a path leave the workspace, even while sandboxed code races it with
    symlink swaps: it runs as the sandbox user inside the sandbox (Docker) or walks the path from a
    directory fd one component at a time without following links (host-workspace backends).
    `read_file` reads regular files only (a FIFO, socket or device is refused at once, never waited
    on), at most `max_bytes` (the backend's `read_limit` by default): a larger file raises
    FileTooLarge, or with `partial=True` returns its first `max_bytes`.

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

    async def read_file(self, path: str, *, max_bytes: int | None = None, partial: bool = False) -> bytes: ...

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
