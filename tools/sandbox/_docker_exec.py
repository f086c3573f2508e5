"""One `docker exec` with a process-group kill on timeout, capped output and stdin, off the event loop.

The docker SDK's `exec_run` blocks until the command ends and cannot time out or kill anything. We
talk to the attach socket directly instead: a reader thread demultiplexes the 8-byte-header frames
into capped buffers until EOF or a deadline, a writer thread feeds stdin then half-closes. The command
runs under `setsid` in the container with its group id written to a pid file, so a timeout can kill the
whole group *inside* the container with a second exec (killing the client side kills nothing).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import anyio

from ._proc import TIMEOUT_EXIT_CODE, CappedBuffer
from .base import SandboxError

#: After a kill, how long the reader keeps collecting output that was already on its way.
_DRAIN_AFTER_KILL_S = 2.0
_POLL_S = 0.1

# The exec's own process is a small `sh` supervisor that stays *outside* the command's group: the
# command runs under `setsid` (not forking: a background child is no group leader), so its pid is its
# process group id. The supervisor records it, waits, then kills whatever the command left in its
# group, so an exec ends completely on every backend (a daemon must `setsid` itself to outlive it).
# stdin goes through fd 3: an asynchronous list gets /dev/null as stdin, even with `<&0` (dash).
# Only builtins after the fork: this must still work when the command used up the pids limit.
_WRAPPER = (
    'p=$1; shift; exec 3<&0; setsid "$@" <&3 3<&- & c=$!; exec 3<&-; echo "$c" >"$p"; '
    'wait "$c"; rc=$?; kill -KILL "-$c" 2>/dev/null; exit $rc'
)
_KILLER = 'read pg <"$0" && kill -KILL "-$pg" 2>/dev/null; exit 0'


@dataclass(slots=True)
class RawResult:
    exit_code: int
    stdout: bytes
    stderr: bytes
    timed_out: bool
    truncated: bool


def _docker_errors() -> tuple[type[BaseException], ...]:
    import docker.errors
    import requests

    return (docker.errors.APIError, requests.exceptions.RequestException, OSError)


def _raw_socket(sock: Any) -> socket.socket:
    inner = getattr(sock, "_sock", sock)
    if not isinstance(inner, socket.socket):
        raise SandboxError(f"unsupported Docker transport socket {type(inner).__name__}")
    return inner


class _Reader:
    """Demultiplexes Docker's stream framing: [type, 0, 0, 0, size:uint32be] + payload."""

    def __init__(self, sock: socket.socket, out: CappedBuffer, err: CappedBuffer) -> None:
        self.sock, self.out, self.err = sock, out, err
        self.pending = bytearray()
        self.stop = threading.Event()

    def _dispatch(self) -> None:
        while len(self.pending) >= 8:
            kind, size = self.pending[0], struct.unpack(">I", self.pending[4:8])[0]
            if len(self.pending) < 8 + size:
                return
            payload = bytes(self.pending[8 : 8 + size])
            del self.pending[: 8 + size]
            (self.err if kind == 2 else self.out).feed(payload)

    def run_until(self, deadline: float) -> bool:
        """Read until EOF (True) or until the deadline or stop flag (False)."""
        while not self.stop.is_set():
            now = time.monotonic()
            if now >= deadline:
                return False
            ready, _, _ = select.select([self.sock], [], [], min(_POLL_S, deadline - now))
            if not ready:
                continue
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                return True
            except (BlockingIOError, InterruptedError):
                continue
            if not chunk:
                return True
            self.pending += chunk
            self._dispatch()
        return False


def _feed(sock: socket.socket, data: bytes | None) -> None:
    with contextlib.suppress(OSError):
        if data:
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)


def _start(
    api: Any, cid: str, argv: list[str], *, user: str, workdir: str, env: dict[str, str], stdin: bool
) -> tuple[str, socket.socket]:
    try:
        exec_id = api.exec_create(
            cid, argv, stdout=True, stderr=True, stdin=stdin, tty=False,
            user=user, workdir=workdir, environment=env,
        )["Id"]  # fmt: skip
        sock = _raw_socket(api.exec_start(exec_id, socket=True))
    except _docker_errors() as e:
        raise SandboxError(f"sandbox container {cid[:12]} cannot run commands: {_explain(e)}") from e
    sock.setblocking(True)
    return exec_id, sock


def _explain(e: BaseException) -> str:
    text = str(e)
    if "No such container" in text or "404" in text:
        return "the container is gone (removed or expired)"
    if "is not running" in text or "409" in text:
        return "the container is not running (stopped, killed or expired)"
    return text


def _exit_code(api: Any, cid: str, exec_id: str) -> int:
    for _ in range(50):
        try:
            info = api.exec_inspect(exec_id)
        except _docker_errors() as e:
            raise SandboxError(f"sandbox container {cid[:12]} vanished during exec: {_explain(e)}") from e
        if not info.get("Running") and info.get("ExitCode") is not None:
            return int(info["ExitCode"])
        time.sleep(0.02)
    _assert_running(api, cid)
    return -1


def _assert_running(api: Any, cid: str, settle_s: float = 0.0) -> None:
    """Raise if the container is gone or going. A container being removed still reports "running"
    for a moment after its processes were killed, so a suspicious exit may look again for `settle_s`.
    """
    deadline = time.monotonic() + settle_s
    while True:
        try:
            state = api.inspect_container(cid)["State"]
        except _docker_errors() as e:
            raise SandboxError(f"sandbox container {cid[:12]} is gone: {_explain(e)}") from e
        if not state.get("Running") or state.get("Status") in ("removing", "exited", "dead"):
            why = " (killed for memory)" if state.get("OOMKilled") else ""
            raise SandboxError(f"sandbox container {cid[:12]} stopped{why}; open a new sandbox")
        if time.monotonic() >= deadline:
            return
        time.sleep(0.1)


def _host_kill(api: Any, cid: str, exec_id: str) -> bool:
    """Kill the exec's process group from the host, when the engine is local and we may signal.

    Needed because a command that used up the pids limit leaves no room for a killer exec: the
    engine's answer is "resource temporarily unavailable". `kill(-pgid)` from outside needs no fork,
    and is atomic against a fork bomb racing it. The exec's host pid is the supervisor `sh`; its
    child is the command's session and group leader. The pid's cgroup must name the container, so a
    remote engine's pid numbers can never hit a local process.
    """
    errors: tuple[type[BaseException], ...] = (OSError, ValueError, *_docker_errors())
    try:
        pid = int(api.exec_inspect(exec_id).get("Pid") or 0)
        if pid <= 0:
            return False
        with open(f"/proc/{pid}/cgroup") as f:
            if cid not in f.read():
                return False
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            leaders = [int(x) for x in f.read().split()]
    except errors:
        return False
    killed = False
    for pgid in leaders:
        try:
            os.killpg(pgid, signal.SIGKILL)
            killed = True
        except ProcessLookupError:
            pass
        except PermissionError:
            return False
    return killed


def _kill_group(api: Any, cid: str, user: str, pidfile: str, exec_id: str) -> None:
    if _host_kill(api, cid, exec_id):
        return
    with contextlib.suppress(SandboxError, *_docker_errors()):
        _, sock = _start(api, cid, ["/bin/sh", "-c", _KILLER, pidfile], user=user, workdir="/",
                         env={}, stdin=False)  # fmt: skip
        reader = _Reader(sock, CappedBuffer(4096), CappedBuffer(4096))
        reader.run_until(time.monotonic() + 10)
        sock.close()


def run_blocking(
    api: Any,
    cid: str,
    argv: list[str],
    *,
    timeout_s: float,
    user: str,
    workdir: str,
    env: dict[str, str],
    stdin: bytes | None,
    output_limit: int,
    cancel: threading.Event,
) -> RawResult:
    """The whole exec, in a worker thread. `cancel` (set by the event loop) ends it early, killing."""
    pidfile = f"/tmp/.agentkit-exec-{uuid.uuid4().hex}.pid"
    wrapped = ["/bin/sh", "-c", _WRAPPER, "agentkit-exec", pidfile, *argv]
    exec_id, sock = _start(api, cid, wrapped, user=user, workdir=workdir, env=env, stdin=stdin is not None)
    out, err = CappedBuffer(output_limit), CappedBuffer(output_limit)
    reader = _Reader(sock, out, err)
    reader.stop = cancel
    writer = threading.Thread(target=_feed, args=(sock, stdin), daemon=True)
    writer.start()
    timed_out = False
    try:
        eof = reader.run_until(time.monotonic() + timeout_s)
        if not eof:
            timed_out = not cancel.is_set()
            _kill_group(api, cid, user, pidfile, exec_id)
            reader.stop = threading.Event()
            reader.run_until(time.monotonic() + _DRAIN_AFTER_KILL_S)
    finally:
        with contextlib.suppress(OSError):
            sock.close()
    if cancel.is_set():
        raise SandboxError("exec cancelled")
    code = TIMEOUT_EXIT_CODE if timed_out else _exit_code(api, cid, exec_id)
    if code == -1 or (code == 137 and not timed_out):
        _assert_running(api, cid, settle_s=0.5)  # a dying container explains a missing status or a SIGKILL
    return RawResult(code, bytes(out.data), bytes(err.data), timed_out, bool(out.dropped or err.dropped))


async def run(
    api: Any,
    cid: str,
    argv: list[str],
    *,
    timeout_s: float,
    user: str,
    workdir: str,
    env: dict[str, str],
    stdin: bytes | None,
    output_limit: int,
) -> RawResult:
    """Async face of run_blocking: cancellation of the caller kills the group in the container."""
    cancel = threading.Event()
    try:
        return await anyio.to_thread.run_sync(
            lambda: run_blocking(
                api, cid, argv, timeout_s=timeout_s, user=user, workdir=workdir, env=env,
                stdin=stdin, output_limit=output_limit, cancel=cancel,
            ),
            abandon_on_cancel=True,
        )  # fmt: skip
    finally:
        cancel.set()
