"""`DockerSandbox`: one long-lived, locked-down container per session.

Defaults are the safe ones: no network, memory/CPU/pids limits, every capability dropped,
no-new-privileges, read-only root, a non-root user, an init process, a size-limited tmpfs workspace at
/workspace (a tmpfs-backed volume) and a tmpfs /tmp. The container's only own process is `sleep <ttl>`:
it removes itself when the TTL ends even if nobody is left to clean up, and labels let the reaper
remove containers whose owner died.

Files cross the boundary only through execs run *as the sandbox user, inside the container*: a read is
`head -c` under the read cap, a write is `cat >`, trees travel as tar streams packed or unpacked by the
container's own `tar`. The engine's archive API (which resolves container paths as root in the daemon,
the shape of the old `docker cp` symlink-swap races) is not used, so a symlink planted or swapped by
sandboxed code can lead a file operation only where that code could go itself. A tar stream coming out
is unpacked on the host by `_files.Tree`, never by tarfile's extraction, so hostile member names and
links cannot reach outside the destination.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import tarfile
import tempfile
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import anyio
import anyio.lowlevel

from . import _docker_exec, _proc
from ._engine import docker_client
from ._files import Tree
from ._workspace import read_only_refusal, workspace_owner
from .base import DEFAULT_READ_LIMIT, ClosesOnExit, ExecResult, FileTooLarge, SandboxError, SandboxUnavailable
from .reaper import make_labels, maybe_reap

DEFAULT_IMAGE = "agentkit-sandbox:latest"
_DEFAULT_USER = "1000:1000"
WORKSPACE = "/workspace"
#: Largest tar stream a download may produce; spooled to a host temp file, never held in memory.
_TRANSFER_LIMIT = 8 << 30
_FILE_OP_TIMEOUT_S = 60.0

# Each script runs as the sandbox user. The checks give the same words as the host-workspace backends;
# a race that swaps in a FIFO after them only makes `head`/`cat` wait, bounded by the op's timeout.
_READ = r"""
f=$1
if [ -d "$f" ]; then echo "Is a directory" >&2; exit 3; fi
if [ -p "$f" ]; then echo "it is a FIFO, not a regular file" >&2; exit 3; fi
if [ -S "$f" ]; then echo "it is a socket, not a regular file" >&2; exit 3; fi
if [ -c "$f" ] || [ -b "$f" ]; then echo "it is a device, not a regular file" >&2; exit 3; fi
exec head -c "$2" -- "$f"
"""
_WRITE = r"""
f=$1
if [ -d "$f" ]; then echo "Is a directory" >&2; exit 3; fi
if [ -e "$f" ] && [ ! -f "$f" ]; then echo "it is not a regular file" >&2; exit 3; fi
d=${f%/*}
if [ -n "$d" ] && [ ! -d "$d" ]; then mkdir -p -- "$d" || exit 3; fi
exec cat >"$f"
"""
_UNTAR = r"""
mkdir -p -- "$1" && exec tar -x -f - -C "$1"
"""


@dataclass(frozen=True, slots=True)
class DockerConfig:
    """Everything that decides what a container looks like; one pool serves one config."""

    image: str = DEFAULT_IMAGE
    memory: str = "1g"
    cpus: float = 1.0
    pids: int = 256
    network: bool = False
    ttl: int = 3600
    workspace_size: str = "1g"
    tmp_size: str = "256m"
    user: str = _DEFAULT_USER
    read_only: bool = True
    env: dict[str, str] = field(default_factory=dict)
    default_timeout: float = _proc.DEFAULT_TIMEOUT_S
    output_limit: int = _proc.DEFAULT_OUTPUT_LIMIT
    read_limit: int = DEFAULT_READ_LIMIT
    host_workspace: str | None = None
    """A host folder mounted as /workspace instead of a fresh tmpfs (`_workspace`); read-only unless
    `workspace_writable`. The container then runs as the folder's owner (root-owned: read-only only)."""
    workspace_writable: bool = False

    def key(self) -> str:
        """Stable identity of the container shape (the pool label)."""
        return uuid.uuid5(uuid.NAMESPACE_OID, repr(replace(self, env=dict(sorted(self.env.items()))))).hex


def _uid_gid(user: str) -> tuple[str, str]:
    uid, _, gid = user.partition(":")
    return uid, gid or uid


def create_container(client: Any, cfg: DockerConfig, session: str, pool: str | None = None) -> Any:
    """Create and start a container (blocking). Sweeps stale containers first when a sweep is due."""
    import docker.errors
    from docker.types import DriverConfig, Mount

    maybe_reap(client)
    uid, gid = _uid_gid(cfg.user)
    ws_opts = f"size={cfg.workspace_size},uid={uid},gid={gid},mode=0755"
    tmpfs_volume = DriverConfig("local", {"type": "tmpfs", "device": "tmpfs", "o": ws_opts})
    labels = make_labels(session, cfg.ttl, pool)
    # the volume carries the labels too: a container removed without its volumes (by hand, or by
    # the engine's auto-remove) leaves a volume the reaper can still recognise as ours
    workspace = Mount(WORKSPACE, None, type="volume", driver_config=tmpfs_volume, labels=labels)
    if cfg.host_workspace is not None:
        workspace = Mount(
            WORKSPACE, os.path.realpath(cfg.host_workspace), type="bind", read_only=not cfg.workspace_writable
        )
    try:
        container = client.containers.create(
            cfg.image,
            ["sleep", str(int(cfg.ttl))],
            entrypoint=[],
            init=True,
            user=cfg.user,
            working_dir=WORKSPACE,
            environment={"HOME": WORKSPACE, "LANG": "C.UTF-8", **cfg.env},
            network_mode="bridge" if cfg.network else "none",
            mem_limit=cfg.memory,
            memswap_limit=cfg.memory,
            nano_cpus=int(cfg.cpus * 1e9),
            pids_limit=cfg.pids,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            read_only=cfg.read_only,
            tmpfs={"/tmp": f"rw,exec,nosuid,nodev,size={cfg.tmp_size},mode=1777"},
            mounts=[workspace],
            labels=labels,
            auto_remove=True,
            detach=True,
        )
    except docker.errors.ImageNotFound as e:
        hint = " (run scripts/build-sandbox-image)" if cfg.image == DEFAULT_IMAGE else ""
        raise SandboxUnavailable(f"sandbox image {cfg.image!r} is not present{hint}") from e
    except docker.errors.APIError as e:
        raise SandboxError(f"cannot create sandbox container: {e.explanation or e}") from e
    try:
        container.start()
    except docker.errors.APIError as e:
        with _suppress_docker():
            container.remove(force=True, v=True)
        raise SandboxError(f"cannot start sandbox container: {e.explanation or e}") from e
    return container


class _suppress_docker:
    def __enter__(self) -> None:
        return None

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> bool:
        import docker.errors
        import requests

        return et is not None and issubclass(
            et, docker.errors.DockerException | requests.RequestException | OSError
        )


class DockerSandbox(ClosesOnExit):
    """A session's container. Use `async with DockerSandbox(...) as sb`, or get one from a SandboxPool."""

    workspace: str = WORKSPACE

    def __init__(self, config: DockerConfig | None = None, *, client: Any = None, **options: Any) -> None:
        self.config = replace(config or DockerConfig(), **options)
        if self.config.host_workspace is not None:
            owner = workspace_owner(self.config.host_workspace, self.config.workspace_writable)
            if owner is not None and self.config.user == _DEFAULT_USER:
                self.config = replace(self.config, user=f"{owner[0]}:{owner[1]}")
        self.session = uuid.uuid4().hex
        self._client = client
        self._container: Any = None
        self._keeper: _docker_exec.Keeper | None = None
        self._closed = False

    @classmethod
    def _adopt(cls, client: Any, container: Any, config: DockerConfig) -> DockerSandbox:
        sb = cls(config, client=client)
        sb._container = container
        sb._keeper = _docker_exec.Keeper.find(client.api, container.id)
        sb.session = container.labels.get("io.agentkit.sandbox.session", sb.session)
        return sb

    @property
    def container_id(self) -> str:
        if self._container is None:
            raise SandboxError("sandbox is not started")
        return str(self._container.id)

    async def start(self) -> DockerSandbox:
        if self._container is None:
            if self._client is None:
                self._client = await anyio.to_thread.run_sync(docker_client)
            # shielded: a create abandoned half-way would leave a running container nobody owns
            # until its TTL (its owner, this process, is alive, so the reaper would spare it)
            with anyio.CancelScope(shield=True):
                self._container = await anyio.to_thread.run_sync(
                    create_container, self._client, self.config, self.session
                )
                self._keeper = await anyio.to_thread.run_sync(
                    _docker_exec.Keeper.find, self._client.api, self._container.id
                )
            try:
                await anyio.lowlevel.checkpoint_if_cancelled()
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self.close()
                raise
        return self

    def _live(self) -> Any:
        if self._closed:
            raise SandboxError("sandbox is closed")
        if self._container is None:
            raise SandboxError("sandbox is not started (use `async with` or `await sb.start()`)")
        return self._container

    def _inner(self, path: str, base: str | None = None) -> str:
        if not isinstance(path, str) or not path or "\x00" in path:
            raise SandboxError(f"invalid sandbox path {path!r}")
        return posixpath.normpath(posixpath.join(base or WORKSPACE, path))

    async def _exec_raw(
        self,
        argv: list[str],
        *,
        timeout: float | None,  # noqa: ASYNC109 (a per-command limit)
        cwd: str | None,
        env: dict[str, str] | None,
        stdin: bytes | IO[bytes] | None,
        output_limit: int,
        stdout: _docker_exec.Sink | None = None,
    ) -> _docker_exec.RawResult:
        container = self._live()
        return await _docker_exec.run(
            self._client.api,
            container.id,
            argv,
            timeout_s=self.config.default_timeout if timeout is None else timeout,
            user=self.config.user,
            workdir=self._inner(cwd) if cwd is not None else WORKSPACE,
            env={**self.config.env, **(env or {})},
            stdin=stdin,
            output_limit=output_limit,
            stdout=stdout,
            keeper=self._keeper,
        )

    async def exec(
        self,
        cmd: str | list[str],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the protocol: a per-command limit)
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        stdin: str | bytes | None = None,
    ) -> ExecResult:
        raw = await self._exec_raw(
            _proc.shell_argv(cmd),
            timeout=timeout,
            cwd=cwd,
            env=env,
            stdin=_proc.stdin_bytes(stdin),
            output_limit=self.config.output_limit,
        )
        if raw.exit_code == 126 and b"OCI runtime exec failed" in raw.stdout and b"chdir" in raw.stdout:
            raise SandboxError(f"cwd {cwd!r} is not a directory in the sandbox")
        stderr = raw.stderr
        note = _proc.killed_note(raw.exit_code, raw.timed_out, f"sandbox memory limit ({self.config.memory})")
        return ExecResult(
            exit_code=raw.exit_code,
            stdout=raw.stdout.decode("utf-8", errors="replace"),
            stderr=stderr.decode("utf-8", errors="replace") + note,
            timed_out=raw.timed_out,
            truncated=raw.truncated,
        )

    async def _file_op(
        self, script: str, *args: str, stdin: bytes | IO[bytes] | None = None, limit: int = 65536,
        stdout: _docker_exec.Sink | None = None,
    ) -> _docker_exec.RawResult:  # fmt: skip
        return await self._exec_raw(
            ["/bin/sh", "-c", script, "agentkit-file", *args], timeout=_FILE_OP_TIMEOUT_S, cwd=None,
            env=None, stdin=stdin, output_limit=limit, stdout=stdout,
        )  # fmt: skip

    @staticmethod
    def _why(raw: _docker_exec.RawResult) -> str:
        """The reason a file script gave: its own words, or the tail of a tool's `prog: path: reason`."""
        if raw.timed_out:
            return "timed out (is it a FIFO or a device?)"
        text = raw.stderr.decode(errors="replace").strip().splitlines()
        last = text[-1] if text else f"exit code {raw.exit_code}"
        return last.rsplit(": ", 1)[-1] if ": " in last and not last.startswith("it is") else last

    async def read_file(self, path: str, *, max_bytes: int | None = None, partial: bool = False) -> bytes:
        inner = self._inner(path)
        limit = self.config.read_limit if max_bytes is None else max_bytes
        want = limit if partial else limit + 1
        raw = await self._file_op(_READ, inner, str(want), limit=want)
        if raw.exit_code != 0:
            raise SandboxError(f"cannot read {path!r}: {self._why(raw)}")
        if len(raw.stdout) > limit:
            size = await self._exec_raw(["stat", "-L", "-c", "%s", "--", inner], timeout=_FILE_OP_TIMEOUT_S,
                                        cwd=None, env=None, stdin=None, output_limit=64)  # fmt: skip
            known = size.stdout.strip()
            raise FileTooLarge(path, int(known) if known.isdigit() else len(raw.stdout), limit)
        return raw.stdout

    def _check_writable(self) -> None:
        if self.config.host_workspace is not None and not self.config.workspace_writable:
            raise read_only_refusal(self.config.host_workspace)

    async def write_file(self, path: str, data: str | bytes) -> None:
        self._check_writable()
        inner = self._inner(path)
        raw_data = data.encode("utf-8") if isinstance(data, str) else data
        raw = await self._file_op(_WRITE, inner, stdin=raw_data)
        if raw.exit_code != 0:
            raise SandboxError(f"cannot write {path!r}: {self._why(raw)}")

    async def upload(self, local: Path, remote: str) -> None:
        self._check_writable()
        inner = self._inner(remote)
        with tempfile.TemporaryFile() as spool:
            target = await anyio.to_thread.run_sync(_pack, Path(local), inner, spool)
            raw = await self._file_op(_UNTAR, target, stdin=spool)
        if raw.exit_code != 0:
            raise SandboxError(f"upload of {local} to {remote!r} failed: {self._why(raw)}")

    async def download(self, remote: str, local: Path) -> None:
        inner = self._inner(remote)
        parent, name = posixpath.dirname(inner) or "/", posixpath.basename(inner) or "."
        with tempfile.TemporaryFile() as spool, tempfile.TemporaryDirectory() as tmp:
            sink = _docker_exec.FileSink(spool, _TRANSFER_LIMIT)
            raw = await self._exec_raw(["tar", "-c", "-f", "-", "-C", parent, "--", name],
                                       timeout=self.config.default_timeout, cwd=None, env=None,
                                       stdin=None, output_limit=65536, stdout=sink)  # fmt: skip
            if raw.exit_code != 0 or sink.dropped:
                why = f"over {_TRANSFER_LIMIT >> 30} GiB" if sink.dropped else self._why(raw)
                raise SandboxError(f"download of {remote!r} failed: {why}")
            spool.seek(0)
            await anyio.to_thread.run_sync(_unpack, spool, tmp, name, Path(local))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        container = self._container
        if container is not None:

            def remove() -> None:
                with _suppress_docker():
                    container.remove(force=True, v=True)

            await anyio.to_thread.run_sync(remove)

    async def __aenter__(self) -> DockerSandbox:
        await self.start()
        return self


def _plain_member(ti: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """Upload: regular files, folders and links only; owned by whoever unpacks (the sandbox user)."""
    if not (ti.isfile() or ti.isdir() or ti.issym()):
        return None
    ti.uid, ti.gid, ti.uname, ti.gname = 0, 0, "", ""
    ti.mode &= 0o777
    return ti


def _pack(src: Path, inner: str, spool: IO[bytes]) -> str:
    """Tar `src` into `spool` for unpacking at the returned folder: a directory's contents land in
    `inner`, a file becomes `inner`."""
    if not src.exists() and not src.is_symlink():
        raise SandboxError(f"nothing to upload at {src}")
    is_dir = src.is_dir() and not src.is_symlink()
    if inner == WORKSPACE and not is_dir:
        raise SandboxError(f"upload target must name a file, not {WORKSPACE}")
    target, arcname = (inner, ".") if is_dir else (posixpath.dirname(inner), posixpath.basename(inner))
    with tarfile.open(fileobj=spool, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.add(src, arcname=arcname, filter=_plain_member)
    spool.seek(0)
    return target


def _unpack(spool: IO[bytes], tmp: str, name: str, dest: Path) -> None:
    """Unpack a tar stream the sandbox produced (hostile) into `tmp`, then copy `name` to `dest`.

    Member by member through `Tree`, which refuses any path or link that leaves `tmp`; tarfile's own
    extraction is not used on it (its path checks have had bypasses). Links are recreated as links,
    never followed; anything but folders, files and links is skipped.
    """
    tree = Tree(tmp, tmp)
    with tarfile.open(fileobj=spool, mode="r|") as tf:
        for member in tf:
            rel = posixpath.normpath(member.name.lstrip("/"))
            if rel == ".." or rel.startswith("../"):
                continue
            with contextlib.suppress(SandboxError):
                if member.isdir():
                    tree.make_dir(rel)
                elif member.isfile():
                    f = tf.extractfile(member)
                    if f is not None:
                        tree.write_stream(rel, f, mode=member.mode & 0o777)
                elif member.issym():
                    tree.symlink(rel, member.linkname)
    tree.copy_out(posixpath.normpath(name), dest)
