"""Labels on every agentkit container, and the reaper that removes the ones nobody owns any more.

A process that dies by `kill -9` (or a machine that loses power) cannot clean up. Every container
therefore says who made it (host, pid and that pid's start time, so a recycled pid does not count as
alive), when, and how long it may live. The TTL is also enforced from inside: the container's only
long-lived process is `sleep <ttl>`, so even an engine nobody reaps frees itself.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from typing import Any

LABEL = "io.agentkit.sandbox"
LABEL_OWNER = f"{LABEL}.owner"
LABEL_SESSION = f"{LABEL}.session"
LABEL_CREATED = f"{LABEL}.created"
LABEL_TTL = f"{LABEL}.ttl"
LABEL_POOL = f"{LABEL}.pool"

_reaped_engines: set[str] = set()
_reap_lock = threading.Lock()


def _proc_start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat: constant for a process's life, different for a recycled pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", errors="replace")
    except OSError:
        return None
    # the command name (field 2) may contain spaces and parentheses; fields after it are plain
    return stat.rpartition(")")[2].split()[19]


def owner_token(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_proc_start_time(pid) or '?'}"


def owner_alive(token: str) -> bool | None:
    """True/False for an owner on this host; None when it lives on another host (we cannot tell)."""
    parts = token.rsplit(":", 2)
    if len(parts) != 3:
        return False
    host, pid_s, start = parts
    if host != socket.gethostname():
        return None
    try:
        pid = int(pid_s)
    except ValueError:
        return False
    actual = _proc_start_time(pid)
    return actual is not None and (start == "?" or actual == start)


def make_labels(session: str, ttl: int, pool: str | None = None) -> dict[str, str]:
    labels = {
        LABEL: "1",
        LABEL_OWNER: owner_token(),
        LABEL_SESSION: session,
        LABEL_CREATED: str(int(time.time())),
        LABEL_TTL: str(int(ttl)),
    }
    if pool is not None:
        labels[LABEL_POOL] = pool
    return labels


def is_stale(labels: dict[str, str], now: float | None = None) -> bool:
    now = time.time() if now is None else now
    try:
        expires = int(labels.get(LABEL_CREATED, "0")) + int(labels.get(LABEL_TTL, "0"))
    except ValueError:
        return True
    if now >= expires:
        return True
    return owner_alive(labels.get(LABEL_OWNER, "")) is False


def reap_stale(client: Any) -> list[str]:
    """Remove (force, with volumes) every labelled container whose owner is gone or whose TTL passed,
    and every labelled volume no container uses any more.

    Returns the ids removed. Safe to run from many processes at once: removal races are ignored, and
    the engine refuses to remove a volume that is in use.
    """
    import docker.errors

    removed: list[str] = []
    for c in client.containers.list(all=True, filters={"label": f"{LABEL}=1"}, ignore_removed=True):
        if not is_stale(dict(c.labels)):
            continue
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            c.remove(force=True, v=True)
            removed.append(c.id)
    # volumes whose container is gone (removed without `v=True`, or auto-removed by the engine)
    for v in client.volumes.list(filters={"label": f"{LABEL}=1", "dangling": True}):
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            v.remove()
            removed.append(v.id)
    return removed


def reap_once(client: Any) -> None:
    """The start-up reaper: at most once per process and engine, so opening many sandboxes stays cheap."""
    key = str(getattr(client.api, "base_url", "default"))
    with _reap_lock:
        if key in _reaped_engines:
            return
        _reaped_engines.add(key)
    reap_stale(client)
