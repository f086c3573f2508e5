"""Host-side process running shared by the local and bubblewrap backends.

Both backends start one host process per exec and need identical semantics: the command gets its own
process group (so a timeout kills everything it spawned, not just the shell), output is capped while
the pipes keep being drained (a chatty command must never block on a full pipe), and whatever was
printed before a kill is still returned.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import anyio
from anyio.abc import ByteReceiveStream, Process

from .base import ExecResult, SandboxError

#: Exit code reported for a command killed by its timeout (the GNU `timeout` convention), on every backend.
TIMEOUT_EXIT_CODE = 124
#: After the group kill, how long to wait for pipes to close (a child that escaped the group may hold them).
_DRAIN_S = 2.0
DEFAULT_OUTPUT_LIMIT = 1 << 20
DEFAULT_TIMEOUT_S = 600.0


@dataclass(slots=True)
class CappedBuffer:
    """Keeps the first `limit` bytes and counts the rest, so a flood costs memory `limit`, not more."""

    limit: int
    data: bytearray = field(default_factory=bytearray)
    dropped: int = 0

    def feed(self, chunk: bytes) -> None:
        room = self.limit - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        self.dropped += max(0, len(chunk) - max(room, 0))

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


def shell_argv(cmd: str | list[str], shell: str = "/bin/bash") -> list[str]:
    """A string is a shell script; a list is an argv run as is (no shell quoting surprises)."""
    if isinstance(cmd, str):
        return [shell, "-c", cmd]
    if not cmd or not all(isinstance(a, str) for a in cmd):
        raise SandboxError(f"command must be a non-empty string or list of strings, got {cmd!r}")
    return list(cmd)


def stdin_bytes(stdin: str | bytes | None) -> bytes | None:
    return stdin.encode("utf-8") if isinstance(stdin, str) else stdin


def normalise_exit(code: int | None) -> int:
    """Signals become 128+n as a shell reports them, so every backend speaks the same numbers."""
    if code is None:
        return -1
    return 128 - code if code < 0 else code


def killed_note(exit_code: int, timed_out: bool, memory_hint: str) -> str:
    """A SIGKILL we did not send is almost always the memory limit; say so instead of a bare 137."""
    if exit_code == 128 + signal.SIGKILL and not timed_out:
        return f"\n[agentkit] process was killed (SIGKILL); most likely it exceeded the {memory_hint}\n"
    return ""


def _killpg(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def _pump(stream: ByteReceiveStream | None, buf: CappedBuffer, done: anyio.Event) -> None:
    try:
        if stream is None:
            return
        with contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            while True:
                buf.feed(await stream.receive(65536))
    finally:
        done.set()


async def run_process(
    argv: Sequence[str],
    *,
    timeout_s: float,
    cwd: str | None,
    env: Mapping[str, str] | None,
    stdin: bytes | None,
    output_limit: int,
    user: int | None = None,
    group: int | None = None,
    memory_hint: str = "memory limit",
    started: set[int] | None = None,
    missing_is_result: bool = False,
) -> ExecResult:
    """Run `argv` in a new session; on timeout or cancellation kill its whole process group.

    `started` holds the group ids of running execs, so closing the sandbox can kill them.
    """
    out, err = CappedBuffer(output_limit), CappedBuffer(output_limit)
    try:
        proc: Process = await anyio.open_process(
            list(argv),
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            user=user,
            group=group,
            extra_groups=[] if user is not None else None,
        )
    except (FileNotFoundError, PermissionError, NotADirectoryError) as e:
        if not missing_is_result:
            raise SandboxError(f"cannot start {argv[0]!r}: {e}") from e
        # a missing program is the command's failure, reported as a shell would (127 / 126)
        code = 127 if isinstance(e, FileNotFoundError) else 126
        return ExecResult(exit_code=code, stdout="", stderr=f"{argv[0]}: {e.strerror}\n")
    pgid = proc.pid  # start_new_session: the child is the leader of a fresh session and group
    if started is not None:
        started.add(pgid)
    timed_out = False
    out_done, err_done = anyio.Event(), anyio.Event()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_pump, proc.stdout, out, out_done)
            tg.start_soon(_pump, proc.stderr, err, err_done)
            if stdin is not None and proc.stdin is not None:
                tg.start_soon(_feed_stdin, proc, stdin)
            with anyio.move_on_after(timeout_s) as scope:
                await proc.wait()
            timed_out = scope.cancelled_caught
            # the exec is over: whatever it left in its group goes too (same rule on every backend;
            # a daemon that should outlive its exec must setsid itself)
            _killpg(pgid)
            with anyio.move_on_after(_DRAIN_S):
                await proc.wait()
                await out_done.wait()
                await err_done.wait()
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            if timed_out or proc.returncode is None:
                _killpg(pgid)
                with anyio.move_on_after(_DRAIN_S):
                    await proc.wait()
            for s in (proc.stdin, proc.stdout, proc.stderr):
                if s is not None:
                    with contextlib.suppress(Exception):
                        await s.aclose()
            if started is not None:
                # only running execs stay listed: a finished group's id may belong to a stranger later
                started.discard(pgid)
    code = TIMEOUT_EXIT_CODE if timed_out else normalise_exit(proc.returncode)
    stderr = err.text() + killed_note(code, timed_out, memory_hint)
    return ExecResult(
        exit_code=code,
        stdout=out.text(),
        stderr=stderr,
        timed_out=timed_out,
        truncated=bool(out.dropped or err.dropped),
    )


async def _feed_stdin(proc: Process, data: bytes) -> None:
    assert proc.stdin is not None
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, BrokenPipeError):
        await proc.stdin.send(data)
        await proc.stdin.aclose()
