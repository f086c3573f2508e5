"""Who owns a sandbox: a token naming one process on one boot of one host, and whether it still lives.

A process killed with `kill -9` (or a machine that loses power) cannot clean up after itself, so every
sandbox records its owner and a later process judges the leftovers. A pid alone is not enough: pids are
recycled, so the token adds the process's start time (constant for its life) and the boot id (start
times restart at every boot, and /tmp or a Docker engine can outlive a reboot).
"""

from __future__ import annotations

import functools
import os
import socket


@functools.cache
def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return "?"


def start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat: constant for a process's life, different for a recycled pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", errors="replace")
    except OSError:
        return None
    # the command name (field 2) may contain spaces and parentheses; the fields after it are plain
    return stat.rpartition(")")[2].split()[19]


def owner_token(pid: int | None = None) -> str:
    """`host:boot:pid:start` for `pid` (default: this process)."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{boot_id()}:{pid}:{start_time(pid) or '?'}"


def owner_alive(token: str) -> bool | None:
    """True/False for an owner on this host; None when it lives on another host (we cannot tell).

    Also reads the older `host:pid:start` form (no boot id), so sandboxes made by an earlier version
    are still judged.
    """
    parts = token.split(":")
    if len(parts) == 3:
        host, boot, pid_s, start = parts[0], boot_id(), parts[1], parts[2]
    elif len(parts) == 4:
        host, boot, pid_s, start = parts
    else:
        return False
    if host != socket.gethostname():
        return None
    if boot != boot_id():
        return False  # made before the last reboot: its owner is gone, whatever its pid is now
    try:
        pid = int(pid_s)
    except ValueError:
        return False
    actual = start_time(pid)
    return actual is not None and (start == "?" or actual == start)
