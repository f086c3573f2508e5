"""One `docker exec` whose whole process tree dies with it, with capped output and stdin, off the event loop.

The docker SDK's `exec_run` blocks until the command ends and cannot time out or kill anything. We
talk to the attach socket directly instead: a reader thread demultiplexes the 8-byte-header frames
into capped sinks until EOF or a deadline, a writer thread feeds stdin then half-closes.

Every exec runs under its own init: Docker mounts its init (tini) at /sbin/docker-init in a container
made with `init=True`, and `-s` makes it a child subreaper, so every process the command starts stays in
its tree even after `setsid` or a double fork (an orphan is reparented to the nearest subreaper, not to
the container's pid 1). When the command ends, the supervisor shell under that init stops and then
kills every other process in the tree before it exits; on a timeout or cancellation the host does the
same from outside (`_kill_tree`, no fork needed inside, so it works when a fork bomb used up the pids
limit), or, for a remote engine, a second exec does it from the init's pid in a pid file.

Code in a call runs as the same user as its init and may kill it to get out of the tree; its orphans
then hang off the container's own init, where nothing of ours ever runs but `sleep <ttl>`. Those
strays are killed at the end of every call: from the host (`Keeper`, a local engine) and from inside
by the supervisor and the killer.
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
from typing import IO, Any, Protocol

import anyio

from ._proc import TIMEOUT_EXIT_CODE, CappedBuffer
from .base import SandboxError

#: After a kill, how long the reader keeps collecting output that was already on its way.
_DRAIN_AFTER_KILL_S = 2.0
_POLL_S = 0.1
INIT = "/sbin/docker-init"

# Stop, then kill, every process below $1 except $2, top-down: a stopped process cannot fork, and its
# children are listed only after it stopped, so nothing is missed; a second pass catches a child forked
# while a stop was still on its way. `strays` does the same to every tree hanging off the container's
# init except its oldest child (`sleep <ttl>`) and $1: a call's processes never hang there unless code
# in a call killed its own init (same uid, so it may) to slip out. Builtins only: this must work when
# the command used up the pids limit.
_SWEEP = r"""
sweep() {
  r=$1 s=$2 all= n=0
  while [ $n -lt 4 ]; do
    n=$((n+1)) todo=$r found=
    while [ -n "$todo" ]; do
      set -- $todo; p=$1; shift; todo=$*
      for f in /proc/$p/task/*/children; do
        k=; read -r k 2>/dev/null <"$f"
        for c in $k; do
          [ "$c" = "$s" ] && continue
          kill -STOP "$c" 2>/dev/null
          case " $all " in *" $c "*) ;; *) all="$all $c" found=1;; esac
          todo="$todo $c"
        done
      done
    done
    [ -z "$found" ] && break
  done
  [ -n "$all" ] && kill -KILL $all 2>/dev/null
  return 0
}
strays() {
  me=$1 k=; read -r k 2>/dev/null </proc/1/task/1/children
  set -- $k; keep=${1:-0}
  for c; do [ "$c" -lt "$keep" ] && keep=$c; done
  for c; do
    [ "$c" = "$keep" ] || [ "$c" = "$me" ] || { sweep "$c" "$me"; kill -KILL "$c" 2>/dev/null; }
  done
  return 0
}
"""
# The supervisor, a child of the per-call init: records the init's pid, runs the command (stdin through
# fd 3: an asynchronous list gets /dev/null as stdin, even with `<&0` in dash), waits, then sweeps the
# init's tree (everything but itself) and any strays, and exits with the command's status, which the
# init passes on. ($PPID stays the init's pid even if the init was killed meanwhile.)
_WRAPPER = (
    _SWEEP
    + r"""
pf=$1; shift; echo "$PPID" >"$pf"
exec 3<&0; "$@" <&3 3<&- & c=$!; exec 3<&-
wait "$c"; rc=$?
sweep "$PPID" $$; strays $$
rm -f -- "$pf" 2>/dev/null
exit $rc
"""
)
# On a timeout, when the host cannot kill from outside (a remote engine): the call's tree from its
# init's pid, then the strays.
_KILLER = (
    _SWEEP
    + r"""
if read r 2>/dev/null <"$0"; then sweep "$r" none; kill -KILL "$r" 2>/dev/null; fi
strays none
exit 0
"""
)


class Sink(Protocol):
    """Where a stream's bytes go: a CappedBuffer in memory, or a FileSink for large transfers."""

    dropped: int

    def feed(self, chunk: bytes) -> None: ...


class FileSink:
    """Writes up to `limit` bytes to a file and counts the rest, for outputs too big to hold in memory."""

    def __init__(self, file: IO[bytes], limit: int) -> None:
        self.file, self.limit, self.size, self.dropped = file, limit, 0, 0

    def feed(self, chunk: bytes) -> None:
        room = self.limit - self.size
        if room > 0:
            self.file.write(chunk[:room])
            self.size += min(room, len(chunk))
        self.dropped += max(0, len(chunk) - max(room, 0))


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

    def __init__(self, sock: socket.socket, out: Sink, err: Sink) -> None:
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


def _feed(sock: socket.socket, data: bytes | IO[bytes] | None) -> None:
    with contextlib.suppress(OSError):
        if isinstance(data, bytes | bytearray):
            if data:
                sock.sendall(data)
        elif data is not None:
            while chunk := data.read(1 << 20):
                sock.sendall(chunk)
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


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(x) for x in f.read().split())
    return out


def _wait_stopped(pid: int, limit_s: float = 0.05) -> None:
    """A SIGSTOP lands asynchronously; wait (briefly) until the process shows it, so it forks no more."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rpartition(b")")[2].split()[0]
        except (OSError, IndexError):
            return
        if state in (b"T", b"t", b"Z", b"X"):
            return
        time.sleep(0.001)


_KILL_PASSES_S = 5.0
"""How long `_kill_tree` keeps walking a tree that still grows (each pass stops what it finds)."""


def _kill_tree(root: int) -> int:
    """Stop every process of the tree under `root` (included) top-down, then SIGKILL them all.

    Each process is pinned by a pidfd the moment it is found, so a pid recycled meanwhile is never
    signalled. Passes repeat until one finds nothing new, within _KILL_PASSES_S (a fork bomb can keep
    passes busy; a fixed count of 8 passes is the suspect of a rare failure where the call after a bomb
    found the pids limit used up: "Cannot fork"). Returns how many processes were killed.
    """
    fds: dict[int, int] = {}
    deadline = time.monotonic() + _KILL_PASSES_S
    try:
        while time.monotonic() < deadline:
            found, todo = False, [root]
            while todo:
                pid = todo.pop()
                if pid not in fds:
                    try:
                        fds[pid] = os.pidfd_open(pid)
                    except OSError:
                        continue
                    found = True
                    with contextlib.suppress(OSError):
                        signal.pidfd_send_signal(fds[pid], signal.SIGSTOP)
                    _wait_stopped(pid)
                todo.extend(_children(pid))
            if not found:
                break
        for fd in fds.values():
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
        return len(fds)
    finally:
        for fd in fds.values():
            os.close(fd)


@dataclass(frozen=True, slots=True)
class Keeper:
    """The container's init and its one legitimate child (`sleep <ttl>`), as host pids.

    A call's processes run under the call's own init, never under the container's: anything that
    hangs off the container's init besides `sleep` is a stray, there only because code in a call
    killed its own init (same uid, so it may) to slip out of the call's tree.
    """

    init: int
    sleep: int
    sleep_start: str

    @classmethod
    def find(cls, api: Any, cid: str) -> Keeper | None:
        """Host pids of a fresh container (before any call ran); None for an engine we cannot see."""
        from ._owner import start_time

        errors: tuple[type[BaseException], ...] = (OSError, ValueError, KeyError, *_docker_errors())
        try:
            init = int(api.inspect_container(cid)["State"]["Pid"] or 0)
            with open(f"/proc/{init}/cgroup") as f:
                if init <= 0 or cid not in f.read():
                    return None
        except errors:
            return None
        deadline = time.monotonic() + 2.0
        while len(kids := _children(init)) != 1 and time.monotonic() < deadline:
            time.sleep(0.005)  # just started: the init may not have forked `sleep` yet
        if len(kids) != 1:
            return None
        start = start_time(kids[0])
        return cls(init, kids[0], start) if start is not None else None

    def sweep(self) -> int:
        """Kill every tree hanging off the container's init except `sleep`; returns processes killed."""
        from ._owner import start_time

        if start_time(self.sleep) != self.sleep_start:
            return 0  # the container is gone or going; nothing of ours to judge
        return sum(_kill_tree(k) for k in _children(self.init) if k != self.sleep)


def _host_kill(api: Any, cid: str, exec_id: str) -> bool:
    """Kill the exec's whole tree from the host, when the engine is local and we may signal.

    Needed because a command that used up the pids limit leaves no room for a killer exec: the
    engine's answer is "resource temporarily unavailable"; signals from outside need no fork. The
    exec's host pid is its init; the pid's cgroup must name the container, so a remote engine's pid
    numbers can never hit a local process.
    """
    errors: tuple[type[BaseException], ...] = (OSError, ValueError, *_docker_errors())
    try:
        pid = int(api.exec_inspect(exec_id).get("Pid") or 0)
        if pid <= 0:
            return False
        with open(f"/proc/{pid}/cgroup") as f:
            if cid not in f.read():
                return False
        os.kill(pid, 0)
    except PermissionError:
        return False
    except errors:
        return False
    return _kill_tree(pid) > 0


def _kill_exec(api: Any, cid: str, user: str, pidfile: str, exec_id: str) -> None:
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
    stdin: bytes | IO[bytes] | None,
    output_limit: int,
    cancel: threading.Event,
    stdout: Sink | None = None,
    keeper: Keeper | None = None,
) -> RawResult:
    """The whole exec, in a worker thread. `cancel` (set by the event loop) ends it early, killing.

    `stdout` replaces the in-memory stdout buffer (then RawResult.stdout is empty). With a `keeper`
    (a local engine), strays that escaped any call's tree are swept once this call is over.
    """
    pidfile = f"/tmp/.agentkit-exec-{uuid.uuid4().hex}.pid"
    wrapped = [INIT, "-s", "--", "/bin/sh", "-c", _WRAPPER, "agentkit-exec", pidfile, *argv]
    exec_id, sock = _start(api, cid, wrapped, user=user, workdir=workdir, env=env, stdin=stdin is not None)
    out, err = CappedBuffer(output_limit), CappedBuffer(output_limit)
    reader = _Reader(sock, stdout if stdout is not None else out, err)
    reader.stop = cancel
    writer = threading.Thread(target=_feed, args=(sock, stdin), daemon=True)
    writer.start()
    timed_out = False
    try:
        eof = reader.run_until(time.monotonic() + timeout_s)
        if not eof:
            timed_out = not cancel.is_set()
            _kill_exec(api, cid, user, pidfile, exec_id)
            reader.stop = threading.Event()
            reader.run_until(time.monotonic() + _DRAIN_AFTER_KILL_S)
    finally:
        with contextlib.suppress(OSError):
            sock.close()
        if keeper is not None:
            keeper.sweep()
    if cancel.is_set():
        raise SandboxError("exec cancelled")
    code = TIMEOUT_EXIT_CODE if timed_out else _exit_code(api, cid, exec_id)
    if code == -1 or (code == 137 and not timed_out):
        _assert_running(api, cid, settle_s=0.5)  # a dying container explains a missing status or a SIGKILL
    dropped = out.dropped or err.dropped or (stdout is not None and stdout.dropped)
    return RawResult(code, bytes(out.data), bytes(err.data), timed_out, bool(dropped))


async def run(
    api: Any,
    cid: str,
    argv: list[str],
    *,
    timeout_s: float,
    user: str,
    workdir: str,
    env: dict[str, str],
    stdin: bytes | IO[bytes] | None,
    output_limit: int,
    stdout: Sink | None = None,
    keeper: Keeper | None = None,
) -> RawResult:
    """Async face of run_blocking: cancellation of the caller kills the exec's tree in the container."""
    cancel = threading.Event()
    try:
        return await anyio.to_thread.run_sync(
            lambda: run_blocking(
                api, cid, argv, timeout_s=timeout_s, user=user, workdir=workdir, env=env,
                stdin=stdin, output_limit=output_limit, cancel=cancel, stdout=stdout, keeper=keeper,
            ),
            abandon_on_cancel=True,
        )  # fmt: skip
    finally:
        cancel.set()
