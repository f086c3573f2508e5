"""Race-free file operations on a host directory that a running sandbox also writes to.

The sandboxed code is hostile and concurrent: between a check of a path and its use it can swap any
component for a symlink (`renameat2(RENAME_EXCHANGE)` in a loop), so "resolve, check, then open the
path" hands it the host. Nothing here lets the kernel resolve a sandbox-controlled path. Every operation
starts from an fd of the workspace root and opens one component at a time relative to the previous fd
with `O_NOFOLLOW`; a symlink is read with `readlinkat` and interpreted here, the way the sandbox would
see it, and one that leads out of the workspace is refused. Whatever the sandbox swaps in between two
steps, the next step either opens a real directory entry beneath the root or fails. Final opens use
`O_NONBLOCK` and `fstat` on the fd, so a FIFO, socket or device is refused instead of blocking, and
ownership changes use `fchown` on an fd we hold, never a path.

Sandbox paths are POSIX paths as the sandboxed command sees them: relative ones are under the
workspace, absolute ones must name something inside it (`inner_root` is what the workspace is called
inside the sandbox: the host path for LocalSandbox, `/workspace` under bubblewrap).
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .base import FileTooLarge, SandboxError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
#: As many symlinks as the kernel follows in one path walk (MAXSYMLINKS) before ELOOP.
_MAX_LINKS = 40
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Owner:
    """Who files created for the sandbox must belong to (the session's host uid under bwrap as root)."""

    uid: int
    gid: int


def resolve_in(host_root: str, path: str, inner_root: str) -> str:
    """Map a sandbox path to a host path inside `host_root`, or refuse with SandboxError.

    A *check* only (it resolves symlinks with realpath, which a racing sandbox can change right after):
    use it where the host path is then used inside the sandbox by the sandbox user (an exec's cwd), never
    to open, read or write a file as the host.
    """
    rel = _relative(path, inner_root)
    host = os.path.realpath(os.path.join(host_root, rel))
    root = os.path.realpath(host_root)
    if host != root and not host.startswith(root + os.sep):
        raise SandboxError(f"path {path!r} leads outside the sandbox workspace (through a symlink)")
    return host


def _relative(path: str, inner_root: str) -> str:
    if not isinstance(path, str) or not path or "\x00" in path:
        raise SandboxError(f"invalid sandbox path {path!r}")
    inner = posixpath.normpath(posixpath.join(inner_root, path))
    rel = posixpath.relpath(inner, inner_root)
    if rel == ".." or rel.startswith("../"):
        raise SandboxError(f"path {path!r} is outside the sandbox workspace {inner_root}")
    return rel


def _parts(rel: str) -> list[str]:
    return [p for p in rel.split("/") if p not in ("", ".")]


class _Escape(Exception):
    """A symlink led out of the workspace (turned into SandboxError with the caller's path)."""


class Tree:
    """A workspace directory on the host, opened fresh for each operation (the root itself is ours)."""

    def __init__(self, host_root: str, inner_root: str, owner: Owner | None = None) -> None:
        self.host_root = host_root
        self.inner_root = inner_root
        self.owner = owner

    @contextlib.contextmanager
    def _root(self) -> Iterator[int]:
        try:
            fd = os.open(self.host_root, _DIR_FLAGS)
        except OSError as e:
            raise SandboxError(f"sandbox workspace {self.host_root} is gone; open a new sandbox") from e
        try:
            yield fd
        finally:
            os.close(fd)

    # ---- the walk ----

    def _open(self, root: int, path: str, flags: int, *, mkdirs: bool = False, want_dir: bool = False) -> int:
        """Open `path` beneath `root`, following symlinks only while they stay inside, one step at a time.

        Returns an fd of the final object (`want_dir`: of a directory, made with `mkdirs` if missing).
        Raises OSError from the final open (ENOENT, EISDIR, ENXIO...), _Escape for a symlink out of the
        workspace, SandboxError for a lexical escape.
        """
        todo = _parts(_relative(path, self.inner_root))
        stack: list[str] = []
        cur = os.dup(root)
        links = 0
        try:
            while todo:
                name = todo.pop(0)
                if name == "..":  # only ever from a link's target: the path itself was normalised
                    if not stack:
                        raise _Escape
                    stack.pop()
                    os.close(cur)
                    cur = self._reopen(root, stack)
                    continue
                if todo or want_dir:
                    nxt = self._step(cur, name, mkdirs)
                    if nxt is not None:
                        os.close(cur)
                        cur = nxt
                        stack.append(name)
                        continue
                else:
                    try:
                        return os.open(name, flags, 0o644, dir_fd=cur)
                    except OSError as e:
                        if e.errno != errno.ELOOP:
                            raise
                # the entry is (now) a symlink, or a non-directory in the middle of the path
                try:
                    target = os.readlink(name, dir_fd=cur)
                except OSError as e:
                    if e.errno == errno.EINVAL:  # not a link: a file used as a directory
                        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)) from None
                    raise
                links += 1
                if links > _MAX_LINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
                if target.startswith("/"):
                    rel = posixpath.relpath(posixpath.normpath(target), self.inner_root)
                    if rel == ".." or rel.startswith("../"):
                        raise _Escape
                    stack = []
                    os.close(cur)
                    cur = os.dup(root)
                    todo = _parts(rel) + todo
                else:
                    todo = _parts(target) + todo
            # the path named a directory we stand in (the root, or one reached through `..` or a link)
            if not want_dir and flags & (os.O_WRONLY | os.O_RDWR):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
            return os.dup(cur)
        finally:
            os.close(cur)

    def _step(self, cur: int, name: str, mkdirs: bool) -> int | None:
        """An fd of directory `name` in `cur` (made if missing and `mkdirs`); None if it is no directory."""
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=cur)
        except FileNotFoundError:
            if not mkdirs:
                raise
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                return None
            raise
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o755, dir_fd=cur)
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=cur)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):  # swapped for a link or a file meanwhile
                return None
            raise
        self._chown(fd)
        return fd

    def _reopen(self, root: int, stack: list[str]) -> int:
        cur = os.dup(root)
        try:
            for name in stack:
                nxt = os.open(name, _DIR_FLAGS, dir_fd=cur)
                os.close(cur)
                cur = nxt
        except OSError:
            os.close(cur)
            raise
        return cur

    def _chown(self, fd: int) -> None:
        if self.owner is not None:
            st = os.fstat(fd)
            if (st.st_uid, st.st_gid) != (self.owner.uid, self.owner.gid):
                os.fchown(fd, self.owner.uid, self.owner.gid)

    def _create(self, dfd: int, name: str) -> int:
        """A regular file `name` in directory `dfd`, truncated and ours to fill; a link there is replaced."""
        for _ in range(3):
            try:
                fd = os.open(name, _WRITE_FLAGS | os.O_TRUNC, 0o644, dir_fd=dfd)
            except OSError as e:
                if e.errno != errno.ELOOP:
                    raise
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=dfd)
                continue
            try:
                _require_regular(os.fstat(fd).st_mode, name, "write")
                self._chown(fd)
            except BaseException:
                os.close(fd)
                raise
            return fd
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))

    # ---- operations ----

    def read(self, path: str, limit: int, *, partial: bool = False) -> bytes:
        """A regular file's bytes, at most `limit` of them (FileTooLarge beyond, unless `partial`)."""
        with self._root() as root, self._errors("read", path):
            fd = self._open(root, path, _READ_FLAGS)
            try:
                st = os.fstat(fd)
                _require_regular(st.st_mode, path, "read")
                if st.st_size > limit and not partial:
                    raise FileTooLarge(path, st.st_size, limit)
                # one read of the expected size (a regular file rarely returns short), so the host holds
                # the data once, not once per chunk and again joined
                chunks = [os.read(fd, min(st.st_size, limit) + 1)]
                got = len(chunks[0])
                while chunks[-1] and got <= limit:
                    chunks.append(os.read(fd, min(_CHUNK, limit + 1 - got)))
                    got += len(chunks[-1])
            finally:
                os.close(fd)
        data = chunks[0] if len(chunks) == 1 or not chunks[1] else b"".join(chunks)
        if len(data) > limit:
            if not partial:
                raise FileTooLarge(path, max(st.st_size, len(data)), limit)
            data = data[:limit]
        return data

    def write(self, path: str, data: bytes) -> None:
        """Create or overwrite a regular file in place (its mode kept), parent folders made as needed."""
        with self._root() as root, self._errors("write", path):
            fd = self._open(root, path, _WRITE_FLAGS, mkdirs=True)
            try:
                _require_regular(os.fstat(fd).st_mode, path, "write")
                self._chown(fd)
                os.ftruncate(fd, 0)
                _write_all(fd, data)
            finally:
                os.close(fd)

    def make_dir(self, path: str) -> None:
        with self._root() as root, self._errors("make", path):
            os.close(self._open(root, path, _DIR_FLAGS, mkdirs=True, want_dir=True))

    def write_stream(self, path: str, src: IO[bytes], *, mode: int = 0o644) -> None:
        """A new regular file at `path` (a link already there is replaced, not followed) from `src`."""
        parts = _parts(_relative(path, self.inner_root))
        if not parts:
            raise SandboxError(f"cannot write {path!r}: Is a directory")
        with self._root() as root, self._errors("write", path):
            dfd = self._open(root, "/".join(parts[:-1]) or ".", _DIR_FLAGS, mkdirs=True, want_dir=True)
            try:
                fd = self._create(dfd, parts[-1])
            finally:
                os.close(dfd)
            try:
                while chunk := src.read(_CHUNK):
                    _write_all(fd, chunk)
                os.fchmod(fd, mode & 0o777)
            finally:
                os.close(fd)

    def symlink(self, path: str, target: str) -> None:
        """A link at `path` pointing at `target` (stored as text; nothing here ever follows it)."""
        parts = _parts(_relative(path, self.inner_root))
        if not parts:
            raise SandboxError(f"cannot link {path!r}: Is a directory")
        with self._root() as root, self._errors("link", path):
            dfd = self._open(root, "/".join(parts[:-1]) or ".", _DIR_FLAGS, mkdirs=True, want_dir=True)
            try:
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    os.unlink(parts[-1], dir_fd=dfd)
                os.symlink(target, parts[-1], dir_fd=dfd)
                if self.owner is not None:
                    os.chown(parts[-1], self.owner.uid, self.owner.gid, dir_fd=dfd, follow_symlinks=False)
            finally:
                os.close(dfd)

    def is_dir(self, path: str) -> bool:
        with self._root() as root:
            try:
                fd = self._open(root, path, _READ_FLAGS)
            except (OSError, _Escape, SandboxError):
                return False
            try:
                return stat.S_ISDIR(os.fstat(fd).st_mode)
            finally:
                os.close(fd)

    def copy_in(self, src: Path, path: str) -> None:
        """A host directory's contents land in `path`; a host file becomes `path` (links copied as links)."""
        if not src.exists() and not src.is_symlink():
            raise SandboxError(f"nothing to upload at {src}")
        with self._root() as root, self._errors("upload to", path):
            if src.is_dir() and not src.is_symlink():
                fd = self._open(root, path, _DIR_FLAGS, mkdirs=True, want_dir=True)
                try:
                    for entry in os.scandir(src):
                        self._copy_entry_in(Path(entry.path), fd, entry.name)
                finally:
                    os.close(fd)
                return
            parts = _parts(_relative(path, self.inner_root))
            if not parts:
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
            pfd = self._open(root, "/".join(parts[:-1]) or ".", _DIR_FLAGS, mkdirs=True, want_dir=True)
            try:
                self._copy_entry_in(src, pfd, parts[-1])
            finally:
                os.close(pfd)

    def _copy_entry_in(self, src: Path, dfd: int, name: str) -> None:
        if src.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISDIR(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
                    raise IsADirectoryError(errno.EISDIR, f"{os.strerror(errno.EISDIR)}: {name}")
                os.unlink(name, dir_fd=dfd)
            os.symlink(os.readlink(src), name, dir_fd=dfd)
            if self.owner is not None:
                os.chown(name, self.owner.uid, self.owner.gid, dir_fd=dfd, follow_symlinks=False)
        elif src.is_dir():
            sub = self._step(dfd, name, mkdirs=True)
            if sub is None:
                raise NotADirectoryError(errno.ENOTDIR, f"{os.strerror(errno.ENOTDIR)}: {name}")
            try:
                for entry in os.scandir(src):
                    self._copy_entry_in(Path(entry.path), sub, entry.name)
            finally:
                os.close(sub)
        elif src.is_file():
            fd = self._create(dfd, name)
            try:
                with open(src, "rb") as f:
                    while chunk := f.read(_CHUNK):
                        _write_all(fd, chunk)
                os.fchmod(fd, stat.S_IMODE(src.stat().st_mode) & 0o777)
            finally:
                os.close(fd)

    def copy_out(self, path: str, dest: Path) -> None:
        """Mirror of copy_in. Links inside are copied as links, never followed; FIFOs, sockets and
        devices are skipped (copying one would block, or mean nothing outside)."""
        with self._root() as root, self._errors("download", path):
            fd = self._open(root, path, _READ_FLAGS)
            try:
                st = os.fstat(fd)
                if stat.S_ISDIR(st.st_mode):
                    dest.mkdir(parents=True, exist_ok=True)
                    self._copy_dir_out(fd, dest)
                else:
                    _require_regular(st.st_mode, path, "download")
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    _copy_fd_to(fd, dest, st)
            finally:
                os.close(fd)

    def _copy_dir_out(self, dfd: int, dest: Path) -> None:
        with os.scandir(dfd) as it:
            entries = [(e.name, e.is_symlink()) for e in it]
        for name, is_link in entries:
            target = dest / name
            if is_link:
                with contextlib.suppress(OSError):
                    link = os.readlink(name, dir_fd=dfd)
                    if target.is_symlink() or target.is_file():
                        target.unlink()
                    os.symlink(link, target)
                continue
            try:
                fd = os.open(name, _READ_FLAGS, dir_fd=dfd)
            except OSError:
                continue  # gone, or swapped for a link since the listing: never followed
            try:
                st = os.fstat(fd)
                if stat.S_ISDIR(st.st_mode):
                    if target.is_symlink():
                        target.unlink()
                    target.mkdir(exist_ok=True)
                    self._copy_dir_out(fd, target)
                elif stat.S_ISREG(st.st_mode):
                    _copy_fd_to(fd, target, st)
            finally:
                os.close(fd)

    @contextlib.contextmanager
    def _errors(self, verb: str, path: str) -> Iterator[None]:
        """OS errors become the backend-neutral words tools (and a trained model) rely on."""
        try:
            yield
        except _Escape:
            raise SandboxError(
                f"path {path!r} leads outside the sandbox workspace (through a symlink)"
            ) from None
        except OSError as e:
            why = "it is not a regular file" if e.errno == errno.ENXIO else (e.strerror or str(e))
            raise SandboxError(f"cannot {verb} {path!r}: {why}") from e


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view[:_CHUNK]) :]


def _require_regular(mode: int, path: str, verb: str) -> None:
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
    kind = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a device",
            stat.S_IFBLK: "a device"}.get(stat.S_IFMT(mode), "an unusual file")  # fmt: skip
    raise SandboxError(f"cannot {verb} {path!r}: it is {kind}, not a regular file")


def _copy_fd_to(fd: int, dest: Path, st: os.stat_result) -> None:
    if dest.is_symlink():
        dest.unlink()
    with open(dest, "wb") as out:
        while chunk := os.read(fd, _CHUNK):
            out.write(chunk)
    os.chmod(dest, stat.S_IMODE(st.st_mode) & 0o777)
    os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns))
