"""`BwrapSandbox`: isolation without a container engine, through bubblewrap namespaces.

Each exec is a fresh `bwrap` with every namespace unshared (so no network, and its own PID namespace:
when the command ends, everything it started dies with it, `setsid` or not), the host's /usr (and the
/bin, /lib* links) bound read-only, a handful of /etc files, new /proc and /dev, a size-limited tmpfs
/tmp, and the session's host folder bound read-write at /workspace; only the workspace persists between
execs.

Limits hold for the whole sandbox, not per process: every exec joins the sandbox's cgroup (v2 or v1;
`_cgroup`), which caps memory (swap included), processes and CPU share across all its execs together,
as Docker's container cgroup does. The workspace is a tmpfs of `workspace_size_mb` (a quota), mounted
on the host when we run as root. Where no cgroup can be made (not root, nothing delegated),
`cgroup="auto"` falls back, with a warning, to per-process rlimits (RLIMIT_AS for memory; N processes
may then hold N times the limit) and `cgroup="require"` refuses to start.

rlimits stay as a second line: CPU seconds, file size, core dumps, and processes. RLIMIT_NPROC counts
per *host* uid and does not apply to root, so when we run as root each session gets its own unused host
uid: the process limit then is per session, a fork bomb in one session cannot starve another, and
sessions cannot read each other's files even in principle. Run as an ordinary user, all of that user's
processes share one count, so the limit becomes the processes the user already has plus `pids`.

The file API works on the host folder without ever letting the kernel resolve a sandbox-controlled
path (`_files.Tree`), so a sandbox racing it with symlink swaps cannot lead it out.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import anyio

from . import _proc, reaper
from ._cgroup import CgroupUnavailable, Group, Limits
from ._files import Owner, Tree
from ._hostroot import INNER_UID, WORKSPACE, HostRoot, check_started
from ._workspace import check_reachable, read_only_refusal, workspace_owner
from .base import DEFAULT_READ_LIMIT, ClosesOnExit, ExecResult, SandboxError, SandboxUnavailable

log = logging.getLogger("agentkit.sandbox")

#: Host uids handed to root-run sessions: far above any real account, below the 32-bit overflow ids.
_UID_BASE, _UID_SPAN = 3_000_000, 1_000_000
_ETC_FILES = (
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime", "nsswitch.conf",
    "ssl", "ca-certificates", "mime.types", "bash.bashrc", "profile", "inputrc", "gitconfig",
)  # fmt: skip
_OOM_MARKERS = ("MemoryError", "Cannot allocate memory", "std::bad_alloc", "out of memory")
_SYSTEM_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
#: Joins the sandbox's cgroup (every hierarchy), then becomes the command: runs before privileges drop.
_JOIN = 'while [ "$1" != -- ]; do echo $$ >"$1" || exit 125; shift; done; shift; exec "$@"'
_JOIN_FAILED = 125
_warned: set[str] = set()


@dataclass(frozen=True, slots=True)
class BwrapConfig:
    """Limits and options of one bubblewrap sandbox (memory, processes and CPU for all its execs)."""

    memory_mb: int = 1024
    cpus: float | None = 1.0
    cpu_seconds: int = 600
    pids: int = 256
    file_size_mb: int = 1024
    tmp_size_mb: int = 256
    workspace_size_mb: int | None = 1024
    network: bool = False
    env: dict[str, str] = field(default_factory=dict)
    extra_ro_binds: tuple[str, ...] = ()
    default_timeout: float = _proc.DEFAULT_TIMEOUT_S
    output_limit: int = _proc.DEFAULT_OUTPUT_LIMIT
    read_limit: int = DEFAULT_READ_LIMIT
    cgroup: Literal["auto", "require", "off"] = "auto"
    cgroup_parent: str | None = None
    host_workspace: str | None = None
    """A host folder bound as /workspace instead of the session's own (`_workspace`); read-only unless
    `workspace_writable`. Run as root, the sandbox then acts as the folder's owner (root-owned: read-only)."""
    workspace_writable: bool = False


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
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        raise SandboxUnavailable("`setpriv` (util-linux) is not installed; bwrap as root needs it")
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
    """A host folder plus one bubblewrap jail per exec, all in one cgroup; deleted on close."""

    workspace: str = WORKSPACE

    def __init__(self, config: BwrapConfig | None = None, **options: Any) -> None:
        self.config = replace(config or BwrapConfig(), **options)
        self._bwrap: str | None = None
        self._host: HostRoot | None = None
        self._tree: Tree | None = None
        self._groups: set[int] = set()
        self._closed = False
        self._as_root = os.geteuid() == 0
        self.host_uid = _UID_BASE + secrets.randbelow(_UID_SPAN) if self._as_root else os.geteuid()
        self.host_gid = self.host_uid if self._as_root else os.getegid()
        self._user_dir: str | None = None
        self._shared_uid = not self._as_root  # the host uid also runs processes outside the sandbox
        if self.config.host_workspace is not None:
            owner = workspace_owner(self.config.host_workspace, self.config.workspace_writable)
            self._user_dir = os.path.realpath(self.config.host_workspace)
            if owner is not None and self._as_root:
                self.host_uid, self.host_gid = owner
                self._shared_uid = True
            check_reachable(self._user_dir, self.host_uid, self.host_gid)

    @property
    def host_workspace(self) -> str:
        host = check_started(self._host)
        return self._user_dir or host.workspace

    @property
    def cgroup(self) -> Group | None:
        """The sandbox's cgroup, or None in the rlimit-only mode (see the module docstring)."""
        return self._host.group if self._host is not None else None

    async def start(self) -> BwrapSandbox:
        if self._host is None and not self._closed:
            self._bwrap = await anyio.to_thread.run_sync(find_bwrap)
            with anyio.CancelScope(shield=True):  # a half-made root would be left for the reaper
                host = await anyio.to_thread.run_sync(self._make_host)
            self._host = host
            owner = Owner(self.host_uid, self.host_gid) if self._as_root else None
            self._tree = Tree(self._user_dir or host.workspace, WORKSPACE, owner)
        return self

    def _make_host(self) -> HostRoot:
        reaper.ensure_background()  # sweeps leftovers of killed processes when a sweep is due
        cfg = self.config
        # a user's folder is bound over the workspace, so no quota tmpfs is made for it
        quota = cfg.workspace_size_mb << 20 if cfg.workspace_size_mb and self._user_dir is None else None
        host = HostRoot.create(
            uid=self.host_uid, gid=self.host_gid, as_root=self._as_root, workspace_bytes=quota
        )
        if cfg.cgroup == "off":
            return host
        try:
            limits = Limits(cfg.memory_mb << 20, cfg.pids, cfg.cpus)
            host.group = Group.create(
                limits, parent=cfg.cgroup_parent or os.environ.get("AGENTKIT_CGROUP_PARENT")
            )
        except CgroupUnavailable as e:
            if cfg.cgroup == "require":
                host.teardown()
                raise SandboxUnavailable(f"bubblewrap sandbox needs a cgroup and cannot make one: {e}") from e
            if str(e) not in _warned:
                _warned.add(str(e))
                log.warning(
                    "sandbox: no cgroup for bubblewrap (%s); memory is limited per process only "
                    "(RLIMIT_AS), not for the sandbox as a whole. Run as root or delegate a cgroup "
                    "(cgroup_parent / AGENTKIT_CGROUP_PARENT); cgroup='require' refuses instead.",
                    e,
                )
        return host

    def _check(self) -> HostRoot:
        if self._closed:
            raise SandboxError("sandbox is closed")
        if self._bwrap is None:
            raise SandboxError("sandbox is not started (use `async with` or `await sb.start()`)")
        return check_started(self._host)

    def _files(self) -> Tree:
        self._check()
        assert self._tree is not None
        return self._tree

    def _argv(self, host: HostRoot, argv: list[str], cwd: str, env: dict[str, str]) -> list[str]:
        assert self._bwrap is not None
        cfg = self.config
        nproc = _count_processes(self.host_uid) + cfg.pids if self._shared_uid else cfg.pids
        limits = ["prlimit", f"--cpu={cfg.cpu_seconds}", f"--fsize={cfg.file_size_mb << 20}",
                  f"--nproc={nproc}", "--core=0"]  # fmt: skip
        if host.group is None:
            limits.append(f"--as={cfg.memory_mb << 20}")  # the weaker mode: per process only
        limits.append("--")
        bw = [self._bwrap, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session"]
        if _supports(self._bwrap, "--disable-userns"):
            bw.append("--disable-userns")  # no nested user namespaces: less kernel to attack from inside
        if cfg.network:
            bw.append("--share-net")
        bw += ["--uid", str(INNER_UID), "--gid", str(INNER_UID), "--hostname", "sandbox"]
        bw += ["--ro-bind", "/usr", "/usr"]
        for d in _SYSTEM_DIRS:
            path = "/" + d
            if os.path.islink(path):
                bw += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                bw += ["--ro-bind", path, path]
        bw += ["--dir", "/etc"]
        for name in _ETC_FILES:
            bw += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
        for name in ("passwd", "group", "hostname", "hosts"):
            bw += ["--ro-bind", os.path.join(host.path, "etc", name), f"/etc/{name}"]
        for extra in cfg.extra_ro_binds:
            bw += ["--ro-bind", extra, extra]
        bw += ["--proc", "/proc", "--dev", "/dev"]
        if _supports(self._bwrap, "--size"):
            bw += ["--size", str(cfg.tmp_size_mb << 20)]
        bw += ["--tmpfs", "/tmp"]
        if self._user_dir is not None:
            bind = "--bind" if cfg.workspace_writable else "--ro-bind"
            bw += [bind, self._user_dir, WORKSPACE, "--chdir", cwd]
        else:
            bw += ["--bind", host.workspace, WORKSPACE, "--chdir", cwd]
        # bwrap builds / as a tmpfs; freeze it so only /workspace and /tmp take writes
        bw += ["--remount-ro", "/"]
        bw += ["--clearenv"]
        for k, v in env.items():
            bw += ["--setenv", k, v]
        command = [*limits, *bw, "--", *argv]
        if host.group is None:
            return command
        drop = ["setpriv", f"--reuid={self.host_uid}", f"--regid={self.host_gid}", "--clear-groups", "--"]
        join = ["/bin/sh", "-c", _JOIN, "agentkit-join", *host.group.procs_files, "--"]
        return [*join, *(drop if self._as_root else []), *command]

    def _inner_cwd(self, cwd: str | None) -> str:
        if cwd is None:
            return WORKSPACE
        inner = os.path.normpath(os.path.join(WORKSPACE, cwd))
        if inner == "/tmp" or inner.startswith("/tmp/"):
            return inner  # fresh per exec: only /tmp itself exists, and bwrap says so if not
        if not self._files().is_dir(cwd):
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
        host = self._check()
        inner_cwd = self._inner_cwd(cwd)
        base_env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": WORKSPACE,
            "LANG": "C.UTF-8",
            "USER": "sandbox",
        }
        full_env = {**base_env, **self.config.env, **(env or {})}
        argv = self._argv(host, _proc.shell_argv(cmd), inner_cwd, full_env)
        # with a cgroup the join wrapper starts as us and drops to the session uid itself (setpriv)
        drop = _drop_root_kwargs(self.host_uid) if host.group is None else {}
        ooms = host.group.oom_kills() if host.group is not None else 0
        result = await _proc.run_process(
            argv,
            timeout_s=self.config.default_timeout if timeout is None else timeout,
            cwd=host.path,
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
        if host.group is not None and result.exit_code == _JOIN_FAILED and "agentkit-join" in result.stderr:
            raise SandboxError(f"cannot place the command in the sandbox's cgroup: {result.stderr.strip()}")
        if result.exit_code == 1 and result.stderr.startswith("bwrap: execvp "):
            # a missing program is the command's failure, reported as a shell would: 127
            return replace(result, exit_code=127, stderr=result.stderr.removeprefix("bwrap: execvp "))
        if result.exit_code == 1 and result.stderr.startswith("bwrap: "):
            raise SandboxError(f"bubblewrap refused to start the command: {result.stderr.strip()}")
        return self._explain_memory(host, result, ooms)

    def _explain_memory(self, host: HostRoot, result: ExecResult, ooms_before: int) -> ExecResult:
        """Say when the memory limit ended a command: the cgroup counts its kills; rlimits make
        allocations fail instead of summoning the OOM killer, and the program says so itself."""
        limit = f"the sandbox memory limit is {self.config.memory_mb} MiB"
        if host.group is not None and host.group.oom_kills() > ooms_before:
            if "[agentkit]" not in result.stderr:
                note = f"a process was killed because {limit} (all its processes together)"
                return replace(result, stderr=result.stderr + f"\n[agentkit] out of memory: {note}\n")
            return result
        if result.exit_code != 0 and any(m in result.stderr for m in _OOM_MARKERS):
            return replace(result, stderr=result.stderr + f"\n[agentkit] out of memory: {limit}\n")
        return result

    async def read_file(self, path: str, *, max_bytes: int | None = None, partial: bool = False) -> bytes:
        tree = self._files()
        limit = self.config.read_limit if max_bytes is None else max_bytes
        return await anyio.to_thread.run_sync(
            functools.partial(tree.read, path, limit, partial=partial), abandon_on_cancel=True
        )

    def _writable_files(self) -> Tree:
        tree = self._files()
        if self._user_dir is not None and not self.config.workspace_writable:
            raise read_only_refusal(self._user_dir)
        return tree

    async def write_file(self, path: str, data: str | bytes) -> None:
        raw = data.encode("utf-8") if isinstance(data, str) else data
        await anyio.to_thread.run_sync(self._writable_files().write, path, raw)

    async def upload(self, local: Path, remote: str) -> None:
        await anyio.to_thread.run_sync(self._writable_files().copy_in, Path(local), remote)

    async def download(self, remote: str, local: Path) -> None:
        await anyio.to_thread.run_sync(self._files().copy_out, remote, Path(local))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for pgid in self._groups:
            _proc._killpg(pgid)
        host = self._host
        if host is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(host.teardown)

    async def __aenter__(self) -> BwrapSandbox:
        await self.start()
        return self
