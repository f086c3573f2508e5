"""Per-sandbox control groups: memory, process and CPU limits for a whole bubblewrap sandbox, and a
kill that reaches every process it ever started.

rlimits are per process: six processes under a "1 GiB" RLIMIT_AS hold 6 GiB between them. A cgroup
counts them together, as Docker's cgroup does for a container. Both layouts the kernel offers are
handled: the unified v2 hierarchy (one directory: `memory.max`, `pids.max`, `cpu.max`, `cgroup.kill`)
and v1 (one directory per controller hierarchy, as on hosts still booted with the legacy layout).

Groups live at `<hierarchy>/<parent>/<name>` with `parent` "agentkit" by default (next to Docker's own
"docker" group) or a delegated subtree the caller names. The name carries its owner's pid namespace,
pid and start time (`<pidns>-<pid>-<start>-<random>`), so a later process can tell a group whose
owner died from one in use without trusting any file a sandbox could have touched. Where no hierarchy
can be written (not root, nothing delegated), CgroupUnavailable says why and the caller decides:
refuse, or its documented weaker mode.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass

from ._owner import start_time

DEFAULT_PARENT = "agentkit"
_CONTROLLERS = ("memory", "pids", "cpu")
_NAME = re.compile(r"^(\d+)-(\d+)-(\d+)-[0-9a-f]{8}$")
_CPU_PERIOD_US = 100_000


class CgroupUnavailable(Exception):
    """No cgroup hierarchy with the needed controllers can be written here; the message says why."""


@dataclass(frozen=True, slots=True)
class Limits:
    memory_bytes: int
    pids: int
    cpus: float | None = None


@dataclass(frozen=True, slots=True)
class _Hierarchy:
    version: int
    mount: str
    controllers: frozenset[str]


def _hierarchies() -> list[_Hierarchy]:
    """The cgroup mounts of this mount namespace that carry a controller we use (v2 first)."""
    found: list[_Hierarchy] = []
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        mount, fstype, superopts = fields[4], tail[0], tail[2].split(",")
        if fstype == "cgroup2":
            try:
                with open(os.path.join(mount, "cgroup.controllers")) as f:
                    ctrls = frozenset(f.read().split())
            except OSError:
                continue
            found.append(_Hierarchy(2, mount, ctrls & frozenset(_CONTROLLERS)))
        elif fstype == "cgroup":
            ctrls = frozenset(superopts) & frozenset(_CONTROLLERS)
            if ctrls:
                found.append(_Hierarchy(1, mount, ctrls))
    found.sort(key=lambda h: -h.version)
    return found


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _layout() -> tuple[int, dict[str, str]]:
    """(version, controller -> hierarchy mount) for the layout that has at least memory and pids."""
    hs = _hierarchies()
    for h in hs:
        if h.version == 2 and {"memory", "pids"} <= h.controllers:
            return 2, {c: h.mount for c in h.controllers}
    v1 = {c: h.mount for h in hs if h.version == 1 for c in h.controllers}
    if {"memory", "pids"} <= set(v1):
        return 1, v1
    if not hs:
        raise CgroupUnavailable("no cgroup filesystem is mounted")
    raise CgroupUnavailable("neither cgroup v2 nor v1 offers both the memory and pids controllers here")


def _pid_namespace() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def owner_name() -> str:
    """A fresh group name naming this process: `<pid namespace>-<pid>-<start time>-<random>`.

    Groups do not outlive a boot, so no boot id; the pid namespace keeps a reaper in one namespace
    (a container sharing the hierarchy) from judging another's pids.
    """
    return f"{_pid_namespace()}-{os.getpid()}-{start_time(os.getpid())}-{secrets.token_hex(4)}"


def owner_of(name: str) -> tuple[int, int] | None:
    """(pid, start time) of a group name made in *this* pid namespace; None for anything else."""
    m = _NAME.match(name)
    if m is None or int(m.group(1)) != _pid_namespace():
        return None
    return int(m.group(2)), int(m.group(3))


class Group:
    """One sandbox's cgroup: a directory per hierarchy (one under v2, up to three under v1)."""

    def __init__(self, version: int, dirs: dict[str, str]) -> None:
        self.version = version
        self.dirs = dirs  # controller -> directory (v2: the same directory for all)

    @property
    def paths(self) -> list[str]:
        return sorted(set(self.dirs.values()))

    @property
    def procs_files(self) -> list[str]:
        """The files a process writes its pid to, to join the group in every hierarchy."""
        return [os.path.join(d, "cgroup.procs") for d in self.paths]

    @classmethod
    def create(cls, limits: Limits, *, parent: str | None = None, name: str | None = None) -> Group:
        """Make the group with its limits, or raise CgroupUnavailable saying why not."""
        version, mounts = _layout()
        parent = (parent or DEFAULT_PARENT).strip("/")
        name = name or owner_name()
        made: list[str] = []
        try:
            if version == 2:
                mount = mounts["memory"]
                _enable_v2(mount, parent, [c for c in _CONTROLLERS if c in mounts])
                path = os.path.join(mount, parent, name)
                os.mkdir(path)
                made.append(path)
                group = cls(2, {c: path for c in mounts})
            else:
                dirs: dict[str, str] = {}
                for ctrl in _CONTROLLERS:
                    if ctrl not in mounts:
                        continue
                    path = os.path.join(mounts[ctrl], parent, name)
                    if path not in made:
                        os.makedirs(path)
                        made.append(path)
                    dirs[ctrl] = path
                group = cls(1, dirs)
            group._set_limits(limits)
        except OSError as e:
            for path in reversed(made):
                with contextlib.suppress(OSError):
                    os.rmdir(path)
            raise CgroupUnavailable(f"cannot set up a cgroup under {parent!r}: {e}") from e
        return group

    def _set_limits(self, limits: Limits) -> None:
        mem, pids, cpu = self.dirs["memory"], self.dirs["pids"], self.dirs.get("cpu")
        if self.version == 2:
            _write(os.path.join(mem, "memory.max"), str(limits.memory_bytes))
            with contextlib.suppress(FileNotFoundError):  # no swap accounting: nothing to turn off
                _write(os.path.join(mem, "memory.swap.max"), "0")
            _write(os.path.join(pids, "pids.max"), str(limits.pids))
            if cpu is not None and limits.cpus:
                _write(os.path.join(cpu, "cpu.max"), f"{int(limits.cpus * _CPU_PERIOD_US)} {_CPU_PERIOD_US}")
            return
        _write(os.path.join(mem, "memory.limit_in_bytes"), str(limits.memory_bytes))
        with contextlib.suppress(FileNotFoundError):  # memory+swap: the same limit, so no escape to swap
            _write(os.path.join(mem, "memory.memsw.limit_in_bytes"), str(limits.memory_bytes))
        _write(os.path.join(pids, "pids.max"), str(limits.pids))
        if cpu is not None and limits.cpus:
            _write(os.path.join(cpu, "cpu.cfs_period_us"), str(_CPU_PERIOD_US))
            _write(os.path.join(cpu, "cpu.cfs_quota_us"), str(int(limits.cpus * _CPU_PERIOD_US)))

    def pids(self) -> set[int]:
        out: set[int] = set()
        for f in self.procs_files:
            with contextlib.suppress(OSError), open(f) as fh:
                out.update(int(x) for x in fh.read().split())
        return out

    def oom_kills(self) -> int:
        """Processes the kernel killed for this group's memory limit so far."""
        mem = self.dirs["memory"]
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            with open(os.path.join(mem, name)) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def memory_usage(self) -> int:
        name = "memory.current" if self.version == 2 else "memory.usage_in_bytes"
        try:
            with open(os.path.join(self.dirs["memory"], name)) as f:
                return int(f.read())
        except (OSError, ValueError):
            return 0

    def kill(self, wait_s: float = 10.0) -> bool:
        """SIGKILL every process in the group until it is empty; True when it is."""
        killer = os.path.join(self.paths[0], "cgroup.kill") if self.version == 2 else None
        deadline = time.monotonic() + wait_s
        while True:
            pids = self.pids()
            if not pids:
                return True
            if killer is not None and os.path.exists(killer):
                with contextlib.suppress(OSError):
                    _write(killer, "1")  # atomic against forks: the kernel kills the whole group
            else:
                for pid in pids:
                    self._kill_member(pid)
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def _kill_member(self, pid: int) -> None:
        """Signal `pid` only while it is still ours: a pidfd pins the process, then membership is checked,
        so a pid recycled by an unrelated process in between is never hit."""
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return
        try:
            with open(f"/proc/{pid}/cgroup") as f:
                mine = any(p.rstrip("/").endswith(self._suffix()) for p in _cgroup_paths(f.read()))
            if mine:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
        except OSError:
            pass
        finally:
            os.close(fd)

    def _suffix(self) -> str:
        d = self.paths[0]
        return "/" + os.path.basename(os.path.dirname(d)) + "/" + os.path.basename(d)

    def remove(self) -> None:
        """Kill what is left, then remove the directories (a dying process leaves them busy a moment)."""
        self.kill()
        for path in self.paths:
            for _ in range(200):
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY:
                        break
                    time.sleep(0.01)


def _cgroup_paths(text: str) -> Iterator[str]:
    for line in text.splitlines():
        yield line.split(":", 2)[-1]


def _enable_v2(mount: str, parent: str, controllers: list[str]) -> None:
    """Make `parent` under the v2 root and let it hand the controllers down (each level must enable
    them for the next; levels we create hold no processes, so the kernel allows it)."""
    level = mount
    wanted = " ".join(f"+{c}" for c in controllers)
    for part in [p for p in parent.split("/") if p]:
        try:
            _write(os.path.join(level, "cgroup.subtree_control"), wanted)
        except OSError as e:
            raise OSError(e.errno, f"cannot enable {wanted} in {level} ({e.strerror})") from e
        level = os.path.join(level, part)
        with contextlib.suppress(FileExistsError):
            os.mkdir(level)
    _write(os.path.join(level, "cgroup.subtree_control"), wanted)


def _stale_groups(parent: str | None) -> list[Group]:
    try:
        version, mounts = _layout()
    except CgroupUnavailable:
        return []
    parent = (parent or DEFAULT_PARENT).strip("/")
    by_name: dict[str, dict[str, str]] = {}
    for ctrl, mount in mounts.items():
        base = os.path.join(mount, parent)
        try:
            names = os.listdir(base)
        except OSError:
            continue
        for name in names:
            if owner_of(name) is not None and os.path.isdir(os.path.join(base, name)):
                by_name.setdefault(name, {})[ctrl] = os.path.join(base, name)
    out = []
    for name, dirs in by_name.items():
        pid, start = owner_of(name) or (0, 0)
        if start_time(pid) != str(start):  # the owner is gone (groups do not outlive a boot)
            out.append(Group(version, dirs))
    return out


def stale(parent: str | None = None) -> list[str]:
    """Directories of groups under `parent` whose owner process is gone. A group whose name does not
    name an owner is not ours to judge and is never listed."""
    return [p for g in _stale_groups(parent) for p in g.paths]


def reap(parent: str | None = None) -> list[str]:
    """Remove the stale groups (killing anything still in them); returns the directories removed."""
    removed: list[str] = []
    for group in _stale_groups(parent):
        group.remove()
        removed.extend(p for p in group.paths if not os.path.exists(p))
    return removed
