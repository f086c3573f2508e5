"""`BwrapSandbox`: isolation without a container engine, through bubblewrap namespaces.

Each exec is a fresh `bwrap` with every namespace unshared (so no network), the host's /usr (and the
/bin, /lib* links) bound read-only, a handful of /etc files, new /proc, /dev and tmpfs /tmp, and the
session's host directory bound read-write at /workspace; only the workspace persists between execs.

Limits are rlimits set by `prlimit` around bwrap: address space (memory), CPU seconds, file size and
processes. RLIMIT_NPROC counts per *host* uid and does not apply to root, so when we run as root each
session gets its own unused host uid: the process limit then is per session, a fork bomb in one
session cannot starve another, and sessions cannot read each other's files even in principle.
Run as an ordinary user, all of that user's processes share one count, so the limit becomes the
processes the user already has plus `pids`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio

from . import _proc
from ._files import copy_tree_in, copy_tree_out, resolve_in
from .base import ClosesOnExit, ExecResult, SandboxError, SandboxUnavailable

WORKSPACE = "/workspace"
INNER_UID = 1000
#: Host uids handed to root-run sessions: far above any real account, below the 32-bit overflow ids.
_UID_BASE, _UID_SPAN = 3_000_000, 1_000_000
_ETC_FILES = (
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime", "nsswitch.conf",
    "ssl", "ca-certificates", "mime.types", "bash.bashrc", "profile", "inputrc", "gitconfig",
)  # fmt: skip
_OOM_MARKERS = ("MemoryError", "Cannot allocate memory", "std::bad_alloc", "out of memory")
_SYSTEM_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


@dataclass(frozen=True, slots=True)
class BwrapConfig:
    memory_mb: int = 1024
    cpu_seconds: int = 600
    pids: int = 256
    file_size_mb: int = 1024
    network: bool = False
    env: dict[str, str] = field(default_factory=dict)
    extra_ro_binds: tuple[str, ...] = ()
    default_timeout: float = _proc.DEFAULT_TIMEOUT_S
    output_limit: int = _proc.DEFAULT_OUTPUT_LIMIT


def find_bwrap() -> str:
    """The bwrap binary, after proving it can actually build a sandbox here (namespaces allowed).

    A successful probe is remembered per (bwrap, prlimit) location, so only the first sandbox of a
    process pays for it; a failure is not, so installing bwrap needs no restart.
    """
    exe = shutil.which("bwrap")
    if exe is None:
        raise SandboxUnavailable("bubblewrap (`bwrap`) is not installed")
    limiter = shutil.which("prlimit")
    if limiter is None:
        raise SandboxUnavailable("`prlimit` (util-linux) is not installed; bwrap limits need it")
    if (exe, limiter) not in _probed:
        _probe(exe)
        _probed.add((exe, limiter))
    return exe


_probed: set[tuple[str, str]] = set()


def _probe(exe: str) -> None:
    probe = [exe, "--unshare-all", "--unshare-user", "--ro-bind", "/", "/", "--", "true"]
    try:
        run = subprocess.run(probe, capture_output=True, timeout=30, check=False, **_drop_root_kwargs())
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SandboxUnavailable(f"bwrap cannot run: {e}") from e
    if run.returncode != 0:
        why = run.stderr.decode(errors="replace").strip()
        raise SandboxUnavailable(f"bwrap cannot create namespaces here: {why}")


@functools.cache
def _supports(exe: str, flag: str) -> bool:
    """Newer bwrap flags are used when this bwrap knows them (0.8 added --disable-userns)."""
    try:
        text = subprocess.run([exe, "--help"], capture_output=True, timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return flag.encode() in text


def _drop_root_kwargs(uid: int | None = None) -> dict[str, Any]:
    if os.geteuid() != 0:
        return {}
    uid = uid if uid is not None else _UID_BASE
    return {"user": uid, "group": uid, "extra_groups": []}


def _count_processes(uid: int) -> int:
    n = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                n += entry.stat().st_uid == uid
    return n


class BwrapSandbox(ClosesOnExit):
    """A host directory plus one bubblewrap jail per exec; deleted on close."""

    workspace: str = WORKSPACE

    def __init__(self, config: BwrapConfig | None = None, **options: Any) -> None:
        self.config = replace(config or BwrapConfig(), **options)
        self._bwrap: str | None = None
        self._root: str | None = None
        self._groups: set[int] = set()
        self._closed = False
        self._as_root = os.geteuid() == 0
        self.host_uid = _UID_BASE + secrets.randbelow(_UID_SPAN) if self._as_root else os.geteuid()
        self.host_gid = self.host_uid if self._as_root else os.getegid()

    @property
    def host_workspace(self) -> str:
        if self._root is None:
            raise SandboxError("sandbox is not started (use `async with` or `await sb.start()`)")
        return os.path.join(self._root, "workspace")

    async def start(self) -> BwrapSandbox:
        if self._root is None:
            self._bwrap = await anyio.to_thread.run_sync(find_bwrap)
            self._root = await anyio.to_thread.run_sync(self._make_root)
        return self

    def _make_root(self) -> str:
        root = tempfile.mkdtemp(prefix="agentkit-bwrap-")
        etc = os.path.join(root, "etc")
        os.mkdir(etc)
        os.mkdir(os.path.join(root, "workspace"), 0o755)
        files = {
            "passwd": "root:x:0:0:root:/root:/bin/bash\n"
            f"sandbox:x:{INNER_UID}:{INNER_UID}::{WORKSPACE}:/bin/bash\n"
            "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
            "group": f"root:x:0:\nsandbox:x:{INNER_UID}:\nnogroup:x:65534:\n",
            "hostname": "sandbox\n",
            "hosts": "127.0.0.1 localhost sandbox\n::1 localhost\n",
        }  # fmt: skip
        for name, text in files.items():
            with open(os.path.join(etc, name), "w") as f:
                f.write(text)
        os.chmod(root, 0o711)
        if self._as_root:
            os.chown(os.path.join(root, "workspace"), self.host_uid, self.host_gid)
        return root

    def _check(self) -> str:
        if self._closed:
            raise SandboxError("sandbox is closed")
        if self._root is None or self._bwrap is None:
            raise SandboxError("sandbox is not started (use `async with` or `await sb.start()`)")
        if not os.path.isdir(self.host_workspace):
            raise SandboxError(f"sandbox workspace {self.host_workspace} is gone; open a new sandbox")
        return self._root

    def _argv(self, root: str, argv: list[str], cwd: str, env: dict[str, str]) -> list[str]:
        assert self._bwrap is not None
        cfg = self.config
        nproc = cfg.pids if self._as_root else _count_processes(self.host_uid) + cfg.pids
        limits = [
            "prlimit",
            f"--as={cfg.memory_mb << 20}",
            f"--cpu={cfg.cpu_seconds}",
            f"--fsize={cfg.file_size_mb << 20}",
            f"--nproc={nproc}",
            "--core=0",
            "--",
        ]
        bw = [self._bwrap, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session"]
        if _supports(self._bwrap, "--disable-userns"):
            bw.append("--disable-userns")  # no nested user namespaces: less kernel to attack from inside
        if cfg.network:
            bw.append("--share-net")
        bw += ["--uid", str(INNER_UID), "--gid", str(INNER_UID), "--hostname", "sandbox"]
        bw += ["--ro-bind", "/usr", "/usr"]
        for d in _SYSTEM_DIRS:
            host = "/" + d
            if os.path.islink(host):
                bw += ["--symlink", os.readlink(host), host]
            elif os.path.isdir(host):
                bw += ["--ro-bind", host, host]
        bw += ["--dir", "/etc"]
        for name in _ETC_FILES:
            bw += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
        for name in ("passwd", "group", "hostname", "hosts"):
            bw += ["--ro-bind", os.path.join(root, "etc", name), f"/etc/{name}"]
        for extra in cfg.extra_ro_binds:
            bw += ["--ro-bind", extra, extra]
        bw += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
        bw += ["--bind", os.path.join(root, "workspace"), WORKSPACE, "--chdir", cwd]
        # bwrap builds / as a tmpfs; freeze it so only /workspace and /tmp take writes
        bw += ["--remount-ro", "/"]
        bw += ["--clearenv"]
        for k, v in env.items():
            bw += ["--setenv", k, v]
        return [*limits, *bw, "--", *argv]

    def _inner_cwd(self, cwd: str | None) -> str:
        if cwd is None:
            return WORKSPACE
        inner = os.path.normpath(os.path.join(WORKSPACE, cwd))
        if inner == "/tmp" or inner.startswith("/tmp/"):
            return inner  # fresh per exec: only /tmp itself exists, and bwrap says so if not
        if not os.path.isdir(resolve_in(self.host_workspace, cwd, WORKSPACE)):
            raise SandboxError(f"cwd {cwd!r} is not a directory in the sandbox")
        return inner

    async def exec(
        self,
        cmd: str | list[str],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the protocol: a per-command limit)
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        stdin: str | bytes | None = None,
    ) -> ExecResult:
        root = self._check()
        inner_cwd = self._inner_cwd(cwd)
        base_env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": WORKSPACE,
            "LANG": "C.UTF-8",
            "USER": "sandbox",
        }
        full_env = {**base_env, **self.config.env, **(env or {})}
        argv = self._argv(root, _proc.shell_argv(cmd), inner_cwd, full_env)
        drop = _drop_root_kwargs(self.host_uid)
        result = await _proc.run_process(
            argv,
            timeout_s=self.config.default_timeout if timeout is None else timeout,
            cwd=root,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            stdin=_proc.stdin_bytes(stdin),
            output_limit=self.config.output_limit,
            user=drop.get("user"),
            group=drop.get("group"),
            memory_hint=f"sandbox memory limit ({self.config.memory_mb} MiB)",
            started=self._groups,
        )
        if self._closed:
            raise SandboxError("sandbox was closed while the command ran")
        if result.exit_code == 1 and result.stderr.startswith("bwrap: execvp "):
            # a missing program is the command's failure, reported as a shell would: 127
            return replace(result, exit_code=127, stderr=result.stderr.removeprefix("bwrap: execvp "))
        if result.exit_code == 1 and result.stderr.startswith("bwrap: "):
            raise SandboxError(f"bubblewrap refused to start the command: {result.stderr.strip()}")
        if result.exit_code != 0 and any(m in result.stderr for m in _OOM_MARKERS):
            # RLIMIT_AS makes allocations fail instead of summoning the OOM killer: say which limit
            note = f"\n[agentkit] out of memory: the sandbox memory limit is {self.config.memory_mb} MiB\n"
            result = replace(result, stderr=result.stderr + note)
        return result

    def _host(self, path: str) -> str:
        self._check()
        return resolve_in(self.host_workspace, path, WORKSPACE)

    def _own(self, path: str) -> None:
        """Files we write as root must belong to the session uid, or the sandbox cannot change them."""
        if not self._as_root:
            return
        for dirpath, dirnames, filenames in os.walk(path) if os.path.isdir(path) else [("", [], [path])]:
            for name in [*dirnames, *filenames]:
                os.lchown(os.path.join(dirpath, name), self.host_uid, self.host_gid)
        os.lchown(path, self.host_uid, self.host_gid)

    def _own_parents(self, host: str) -> None:
        ws = self.host_workspace
        d = os.path.dirname(host)
        while self._as_root and d.startswith(ws + os.sep):
            os.lchown(d, self.host_uid, self.host_gid)
            d = os.path.dirname(d)

    async def read_file(self, path: str) -> bytes:
        host = self._host(path)
        try:
            return await anyio.Path(host).read_bytes()
        except (FileNotFoundError, IsADirectoryError, PermissionError, NotADirectoryError) as e:
            raise SandboxError(f"cannot read {path!r}: {e.strerror}") from e

    async def write_file(self, path: str, data: str | bytes) -> None:
        host = self._host(path)
        raw = data.encode("utf-8") if isinstance(data, str) else data

        def write() -> None:
            try:
                os.makedirs(os.path.dirname(host), exist_ok=True)
                with open(host, "wb") as f:
                    f.write(raw)
            except (IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError) as e:
                raise SandboxError(f"cannot write {path!r}: {e.strerror}") from e
            self._own_parents(host)
            self._own(host)

        await anyio.to_thread.run_sync(write)

    async def upload(self, local: Path, remote: str) -> None:
        host = self._host(remote)

        def copy() -> None:
            copy_tree_in(Path(local), host)
            self._own_parents(host)
            self._own(host)

        await anyio.to_thread.run_sync(copy)

    async def download(self, remote: str, local: Path) -> None:
        await anyio.to_thread.run_sync(copy_tree_out, self._host(remote), Path(local))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for pgid in self._groups:
            _proc._killpg(pgid)
        if self._root is not None:
            root = self._root
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(root, ignore_errors=True))

    async def __aenter__(self) -> BwrapSandbox:
        await self.start()
        return self
