"""`DockerSandbox`: one long-lived, locked-down container per session.

Defaults are the safe ones: no network, memory/CPU/pids limits, every capability dropped,
no-new-privileges, read-only root, a non-root user, an init process, a size-limited tmpfs workspace at
/workspace (a tmpfs-backed *volume*, so the archive API can still copy files in and out) and a tmpfs
/tmp. The container's only own process is `sleep <ttl>`: it removes itself when the TTL ends even if
nobody is left to clean up, and labels let the next start-up reap containers whose owner died.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import anyio.lowlevel

from . import _docker_exec, _proc
from .base import ClosesOnExit, ExecResult, SandboxError, SandboxUnavailable
from .reaper import make_labels, reap_once

DEFAULT_IMAGE = "agentkit-sandbox:latest"
WORKSPACE = "/workspace"
_READ_LIMIT = 1 << 30


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
    user: str = "1000:1000"
    read_only: bool = True
    env: dict[str, str] = field(default_factory=dict)
    default_timeout: float = _proc.DEFAULT_TIMEOUT_S
    output_limit: int = _proc.DEFAULT_OUTPUT_LIMIT

    def key(self) -> str:
        """Stable identity of the container shape (the pool label)."""
        return uuid.uuid5(uuid.NAMESPACE_OID, repr(replace(self, env=dict(sorted(self.env.items()))))).hex


def docker_client() -> Any:
    """A client whose engine answers, or SandboxUnavailable saying why not."""
    try:
        import docker
    except ImportError as e:  # pragma: no cover - docker is a hard dependency
        raise SandboxUnavailable("the `docker` Python package is not installed") from e
    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except Exception as e:
        raise SandboxUnavailable(f"no Docker engine answers ({e}); start dockerd or use bwrap") from e
    return client


def _uid_gid(user: str) -> tuple[str, str]:
    uid, _, gid = user.partition(":")
    return uid, gid or uid


def create_container(client: Any, cfg: DockerConfig, session: str, pool: str | None = None) -> Any:
    """Create and start a container (blocking). Reaps stale containers first, once per process."""
    import docker.errors
    from docker.types import DriverConfig, Mount

    reap_once(client)
    uid, gid = _uid_gid(cfg.user)
    ws_opts = f"size={cfg.workspace_size},uid={uid},gid={gid},mode=0755"
    tmpfs_volume = DriverConfig("local", {"type": "tmpfs", "device": "tmpfs", "o": ws_opts})
    labels = make_labels(session, cfg.ttl, pool)
    # the volume carries the labels too: a container removed without its volumes (by hand, or by
    # the engine's auto-remove) leaves a volume the reaper can still recognise as ours
    workspace = Mount(WORKSPACE, None, type="volume", driver_config=tmpfs_volume, labels=labels)
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


class _NotFound(SandboxError):
    """The archive API found nothing at a path (turned into the backend-neutral message by callers)."""


class DockerSandbox(ClosesOnExit):
    """A session's container. Use `async with DockerSandbox(...) as sb`, or get one from a SandboxPool."""

    workspace: str = WORKSPACE

    def __init__(self, config: DockerConfig | None = None, *, client: Any = None, **options: Any) -> None:
        self.config = replace(config or DockerConfig(), **options)
        self.session = uuid.uuid4().hex
        self._client = client
        self._container: Any = None
        self._closed = False

    @classmethod
    def _adopt(cls, client: Any, container: Any, config: DockerConfig) -> DockerSandbox:
        sb = cls(config, client=client)
        sb._container = container
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
        stdin: bytes | None,
        output_limit: int,
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
        if raw.exit_code == 127 and stderr.startswith(b"setsid: failed to execute "):
            stderr = stderr.removeprefix(b"setsid: failed to execute ")  # same words as other backends
        note = _proc.killed_note(raw.exit_code, raw.timed_out, f"sandbox memory limit ({self.config.memory})")
        return ExecResult(
            exit_code=raw.exit_code,
            stdout=raw.stdout.decode("utf-8", errors="replace"),
            stderr=stderr.decode("utf-8", errors="replace") + note,
            timed_out=raw.timed_out,
            truncated=raw.truncated,
        )

    def _in_workspace(self, inner: str) -> bool:
        return inner == WORKSPACE or inner.startswith(WORKSPACE + "/")

    async def read_file(self, path: str) -> bytes:
        inner = self._inner(path)
        if self._in_workspace(inner):
            try:
                data = await anyio.to_thread.run_sync(self._get_file, inner)
            except _NotFound:
                # the same words as the host-workspace backends, so a tool result (which a model was
                # trained on) does not depend on the backend
                raise SandboxError(f"cannot read {path!r}: No such file or directory") from None
            if data is not None:
                return data
        # /tmp and friends are tmpfs inside the container, invisible to the archive API, and the
        # archive API hands out a symlink as a link: `cat` sees what the command would see
        raw = await self._exec_raw(["cat", "--", inner], timeout=60, cwd=None, env=None, stdin=None,
                                   output_limit=_READ_LIMIT)  # fmt: skip
        if raw.exit_code != 0:
            why = raw.stderr.decode(errors="replace").strip().removeprefix(f"cat: {inner}: ")
            raise SandboxError(f"cannot read {path!r}: {why}")
        return raw.stdout

    async def write_file(self, path: str, data: str | bytes) -> None:
        inner = self._inner(path)
        raw_data = data.encode("utf-8") if isinstance(data, str) else data
        if self._in_workspace(inner) and inner != WORKSPACE:
            await anyio.to_thread.run_sync(self._put_files, {posixpath.relpath(inner, WORKSPACE): raw_data})
            return
        script = 'mkdir -p -- "$(dirname -- "$0")" && cat > "$0"'
        raw = await self._exec_raw(["/bin/sh", "-c", script, inner], timeout=60, cwd=None, env=None,
                                   stdin=raw_data, output_limit=65536)  # fmt: skip
        if raw.exit_code != 0:
            raise SandboxError(f"cannot write {path!r}: {raw.stderr.decode(errors='replace').strip()}")

    async def upload(self, local: Path, remote: str) -> None:
        inner = self._inner(remote)
        if not self._in_workspace(inner) or (inner == WORKSPACE and not await anyio.Path(local).is_dir()):
            raise SandboxError(f"upload target {remote!r} must be inside {WORKSPACE}")
        await anyio.to_thread.run_sync(self._put_tree, Path(local), posixpath.relpath(inner, WORKSPACE))

    async def download(self, remote: str, local: Path) -> None:
        inner = self._inner(remote)
        if not self._in_workspace(inner):
            raise SandboxError(f"download source {remote!r} must be inside {WORKSPACE}")
        await anyio.to_thread.run_sync(self._get_tree, inner, Path(local))

    # ---- archive plumbing (blocking; always called through a worker thread) ----

    def _tarinfo(self, name: str, *, is_dir: bool, size: int = 0, mode: int | None = None) -> tarfile.TarInfo:
        uid, gid = _uid_gid(self.config.user)
        ti = tarfile.TarInfo(name)
        ti.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
        ti.mode = mode if mode is not None else (0o755 if is_dir else 0o644)
        ti.size = size
        ti.mtime = int(time.time())
        ti.uid, ti.gid = int(uid), int(gid)
        return ti

    def _parents(self, tf: tarfile.TarFile, rel: str, seen: set[str]) -> None:
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in seen:
                seen.add(d)
                tf.addfile(self._tarinfo(d, is_dir=True))

    def _put(self, payload: bytes) -> None:
        container = self._live()
        try:
            ok = container.put_archive(WORKSPACE, payload)
        except Exception as e:
            raise SandboxError(f"copy into sandbox failed: {_docker_exec._explain(e)}") from e
        if not ok:
            raise SandboxError("copy into sandbox failed")

    def _put_files(self, files: dict[str, bytes]) -> None:
        buf, seen = io.BytesIO(), set[str]()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            for rel, data in files.items():
                self._parents(tf, rel, seen)
                tf.addfile(self._tarinfo(rel, is_dir=False, size=len(data)), io.BytesIO(data))
        self._put(buf.getvalue())

    def _put_tree(self, src: Path, rel: str) -> None:
        if not src.exists():
            raise SandboxError(f"nothing to upload at {src}")
        uid, gid = _uid_gid(self.config.user)

        def own(ti: tarfile.TarInfo) -> tarfile.TarInfo:
            ti.uid, ti.gid, ti.uname, ti.gname = int(uid), int(gid), "", ""
            return ti

        with tempfile.TemporaryFile() as spool:
            with tarfile.open(fileobj=spool, mode="w") as tf:
                seen: set[str] = set()
                if rel != ".":
                    self._parents(tf, rel if not src.is_dir() else rel + "/x", seen)
                tf.add(src, arcname=rel, filter=own)
            spool.seek(0)
            self._put(spool.read())

    def _archive(self, inner: str) -> tuple[Any, dict[str, Any]]:
        container = self._live()
        try:
            return container.get_archive(inner)
        except Exception as e:
            text = str(e)
            if "Could not find the file" in text or "no such file" in text.lower():
                raise _NotFound(f"no such file in sandbox: {inner}") from e
            raise SandboxError(f"copy out of sandbox failed: {_docker_exec._explain(e)}") from e

    def _get_file(self, inner: str) -> bytes | None:
        """The file's bytes; None for a symlink (the caller reads through it in the container)."""
        stream, _ = self._archive(inner)
        with tempfile.TemporaryFile() as spool:
            for chunk in stream:
                spool.write(chunk)
            spool.seek(0)
            with tarfile.open(fileobj=spool, mode="r") as tf:
                first = tf.next()
                if first is not None and first.issym():
                    return None
                if first is None or not first.isfile():
                    raise SandboxError(f"{inner} is not a regular file")
                f = tf.extractfile(first)
                assert f is not None
                return f.read()

    def _get_tree(self, inner: str, dest: Path) -> None:
        stream, stat = self._archive(inner)
        is_dir = bool(int(stat.get("mode", 0)) & (1 << 31))
        with tempfile.TemporaryFile() as spool, tempfile.TemporaryDirectory() as tmp:
            for chunk in stream:
                spool.write(chunk)
            spool.seek(0)
            with tarfile.open(fileobj=spool, mode="r") as tf:
                tf.extractall(tmp, filter="data")
            from ._files import copy_tree_out

            copy_tree_out(str(Path(tmp) / posixpath.basename(inner)), dest)
            if is_dir and not dest.is_dir():
                raise SandboxError(f"download of {inner} produced no directory")

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
