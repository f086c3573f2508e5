"""The host side of a bubblewrap sandbox: its folder, workspace quota and cgroup, and their reaping.

    <tmp>/agentkit-bwrap-<random>/     ours (root when run as root), 0711
        owner                          JSON: owner token (host, boot id, pid, start time), creation time
        etc/                           passwd, group, hostname, hosts, bound read-only into the sandbox
        workspace/                     the sandbox's /workspace: a size-limited tmpfs where we may mount
                                       (root), else a plain folder (then RLIMIT_FSIZE per file only)

Everything but `workspace/` is made before any sandboxed code runs and is never writable by it. A
process killed with `kill -9` leaves the folder, the mount and the cgroup behind; `reap_stale()` removes
those whose owner is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import json
import logging
import os
import secrets
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass

from ._cgroup import Group
from ._owner import owner_alive, owner_token
from .base import SandboxError

log = logging.getLogger("agentkit.sandbox")

PREFIX = "agentkit-bwrap-"
INNER_UID = 1000
WORKSPACE = "/workspace"
#: A folder without an owner file (made by an older version, or half-made) is judged by its age.
_UNOWNED_GRACE_S = 600
_MS_NOSUID, _MS_NODEV = 2, 4
_MNT_DETACH = 2

_ETC = {
    "passwd": "root:x:0:0:root:/root:/bin/bash\n"
    f"sandbox:x:{INNER_UID}:{INNER_UID}::{WORKSPACE}:/bin/bash\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    "group": f"root:x:0:\nsandbox:x:{INNER_UID}:\nnogroup:x:65534:\n",
    "hostname": "sandbox\n",
    "hosts": "127.0.0.1 localhost sandbox\n::1 localhost\n",
}  # fmt: skip


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning("%s", message)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _mount_tmpfs(target: str, size: int, uid: int, gid: int) -> None:
    opts = f"size={size},mode=0755,uid={uid},gid={gid}".encode()
    if _libc().mount(b"tmpfs", target.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, opts) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount tmpfs on {target}: {os.strerror(err)}")


def _umount(target: str) -> None:
    _libc().umount2(target.encode(), _MNT_DETACH)


def _is_mountpoint(path: str) -> bool:
    try:
        with open("/proc/self/mountinfo") as f:
            return any(line.split()[4] == path for line in f if len(line.split()) > 4)
    except OSError:
        return False


@dataclass(slots=True)
class HostRoot:
    """One sandbox's folder on the host, with its optional tmpfs workspace and cgroup."""

    path: str
    group: Group | None = None
    mounted: bool = False

    @property
    def workspace(self) -> str:
        return os.path.join(self.path, "workspace")

    @classmethod
    def create(cls, *, uid: int, gid: int, as_root: bool, workspace_bytes: int | None) -> HostRoot:
        """Make the folder; mount a `workspace_bytes` tmpfs as the workspace when we may (root)."""
        parent = tempfile.gettempdir()
        path = os.path.join(parent, PREFIX + secrets.token_hex(6))
        os.mkdir(path, 0o700)
        root = cls(path)
        try:
            with open(os.path.join(path, "owner"), "x") as f:
                json.dump({"owner": owner_token(), "created": time.time()}, f)
            etc = os.path.join(path, "etc")
            os.mkdir(etc)
            for name, text in _ETC.items():
                with open(os.path.join(etc, name), "w") as f:
                    f.write(text)
                os.chmod(os.path.join(etc, name), 0o644)
            os.chmod(etc, 0o755)
            os.mkdir(root.workspace, 0o755)
            if as_root and workspace_bytes:
                try:
                    _mount_tmpfs(root.workspace, workspace_bytes, uid, gid)
                    root.mounted = True
                except OSError as e:  # root without CAP_SYS_ADMIN (inside a container, say)
                    _warn_once(f"sandbox: no workspace quota for bubblewrap ({e}); files are limited "
                               "per file only (file_size_mb)")  # fmt: skip
            if as_root and not root.mounted:
                os.chown(root.workspace, uid, gid)
            os.chmod(path, 0o711)
        except BaseException:
            root.teardown()
            raise
        return root

    def teardown(self) -> None:
        """Kill what still runs, unmount, delete. Safe to call twice, and on a half-made root."""
        if self.group is not None:
            self.group.kill()
        if self.mounted or _is_mountpoint(self.workspace):
            _umount(self.workspace)
            self.mounted = False
        # rmtree walks by fd and never follows links, so a planted link cannot aim it at the host
        shutil.rmtree(self.path, ignore_errors=True)
        if self.group is not None:
            self.group.remove()
            self.group = None


def _owner_of(path: str) -> tuple[str | None, float]:
    """(owner token, creation time) from a root's owner file; (None, mtime) when there is none."""
    try:
        fd = os.open(os.path.join(path, "owner"), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None, os.lstat(path).st_mtime
    with os.fdopen(fd) as f:
        try:
            data = json.load(f)
            return str(data["owner"]), float(data["created"])
        except (ValueError, KeyError, TypeError):
            return None, os.lstat(path).st_mtime


def stale_roots(parent: str | None = None, now: float | None = None) -> list[str]:
    """Root folders under `parent` (default: the temp dir) whose owner is gone.

    Only folders we could have made count: real directories (not links) owned by our effective uid,
    not writable by others, so another local user cannot steer the reaper with a fake one.
    """
    parent = parent or tempfile.gettempdir()
    now = time.time() if now is None else now
    out: list[str] = []
    try:
        names = os.listdir(parent)
    except OSError:
        return out
    for name in names:
        if not name.startswith(PREFIX):
            continue
        path = os.path.join(parent, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            continue
        token, created = _owner_of(path)
        if token is None:
            if now - created > _UNOWNED_GRACE_S:
                out.append(path)
        elif owner_alive(token) is False:
            out.append(path)
    return out


def reap_stale(parent: str | None = None) -> list[str]:
    """Remove root folders whose owner is gone (their cgroups are reaped by `_cgroup.reap`)."""
    removed = []
    for path in stale_roots(parent):
        HostRoot(path).teardown()
        if not os.path.exists(path):
            removed.append(path)
    return removed


def check_started(root: HostRoot | None) -> HostRoot:
    if root is None:
        raise SandboxError("sandbox is not started (use `async with` or `await sb.start()`)")
    with contextlib.suppress(OSError):
        if os.path.isdir(root.workspace):
            return root
    raise SandboxError(f"sandbox workspace {root.workspace} is gone; open a new sandbox")
